# The retraining CronJob's container: `moe router retrain` on the decision log's last RETRAIN_WINDOW_DAYS days
# (its other options are this script's arguments), then `moe router gate --promote` on the version it wrote.
# Any failure, a failed gate included, fails the Job.
set -eu
since=$(date -u -d "$RETRAIN_WINDOW_DAYS days ago" +%Y-%m-%dT%H:%M:%SZ)
out=/tmp/candidate
moe router retrain --router "$RETRAIN_ROUTER" --out "$out" --since "$since" "$@"
if [ ! -f "$out/router.json" ]; then
  # Data retrained before leave the version in the database only: it was gated then, and promoting it
  # again could undo an operator's revert.
  echo "no new version of $RETRAIN_ROUTER: these data were retrained before"
  exit 0
fi
version=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$out/router.json")
moe router gate --router "$RETRAIN_ROUTER" --version "$version" --profile "$RETRAIN_GATE" --promote
