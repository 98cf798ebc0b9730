#!/bin/sh
# Copy the shipped Grafana dashboards and Prometheus alert rules into the chart: Helm reads only
# files inside the chart folder. Run from anywhere; tests/deploy checks the copies are current.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
files="$repo/helm/turnout/files"
for source in "$repo"/monitoring/grafana/*.json "$repo"/monitoring/prometheus/*-alerts.yml; do
    [ -e "$source" ] || { echo "missing: $source" >&2; exit 1; }
done
rm -f "$files"/dashboards/*.json "$files"/rules/*.yml
cp "$repo"/monitoring/grafana/*.json "$files/dashboards/"
cp "$repo"/monitoring/prometheus/*-alerts.yml "$files/rules/"
echo "Copied $(ls "$files/dashboards" | wc -l) dashboards and $(ls "$files/rules" | wc -l) rule files into $files"
