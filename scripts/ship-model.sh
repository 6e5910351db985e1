#!/usr/bin/env bash
# Ship a world checkpoint made by `unike train-base` as models/default, and rebuild everything derived from it, in
# order, with each step's output and wall time in LOGDIR (default target/ship-model/):
#   1. `eval-base --n 500` and `--breakdown` of the candidate (printed, not checked: the floors are the tests' job);
#   2. the checkpoint's files into models/default (the derived folders ke/ mend/ serac/ memit/ unike/ removed first,
#      so that nothing trained on the old model survives);
#   3. KE, MEND, SERAC (`train-method`), the FFN key statistics (`build-stats`), UniKE's memory (`build-memory`) and
#      encoders (`train-encoders`), each with the defaults of hparams/<method>/default.toml.
# What it leaves to a person (printed at the end): the development-slice sweeps of the hyper-parameters
# (scripts/dev-sweep.py), the tests that pin the shipped model's figures, `reproduce` and README's tables.
#
#     cargo build --release -p unike-cli && scripts/ship-model.sh wip/issue14-full7 [LOGDIR]
#
# Nothing else should run beside it: the steps' timings are reported in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: scripts/ship-model.sh CHECKPOINT_DIR [LOGDIR]}
logs=${2:-target/ship-model}
bin=target/release/unike
[ -x "$bin" ] || { echo "error: $bin is missing; run: cargo build --release -p unike-cli" >&2; exit 1; }
for f in config.json model.safetensors tokenizer.json training.json preprocessor_config.json processor_config.json; do
    [ -f "$src/$f" ] || { echo "error: $src/$f is missing: not a train-base checkpoint" >&2; exit 1; }
done
mkdir -p "$logs"
step() { # step NAME COMMAND...: run, log, time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    if ! "$@" >"$logs/$name.log" 2>&1; then
        echo "error: $name failed; see $logs/$name.log" >&2
        tail -5 "$logs/$name.log" >&2
        exit 1
    fi
    echo "   $((SECONDS - t0)) s; tail of $logs/$name.log:"
    tail -3 "$logs/$name.log" | sed 's/^/   /'
}
step eval-base "$bin" eval-base --model "$src" --n 500
step breakdown "$bin" eval-base --model "$src" --n 300 --breakdown
rm -rf models/default/{ke,mend,serac,memit,unike}
for f in config.json model.safetensors tokenizer.json training.json preprocessor_config.json processor_config.json \
    training_curve.png; do
    [ -f "$src/$f" ] && install -m 644 "$src/$f" "models/default/$f"
done
step train-ke "$bin" train-method ke
step train-mend "$bin" train-method mend
step train-serac "$bin" train-method serac
step build-stats "$bin" build-stats
step build-memory "$bin" build-memory
step train-encoders "$bin" train-encoders
cat <<EOF
models/default is now $src with every derived network rebuilt (logs in $logs). Left to do by hand:
  - re-check each hparams/<method>/default.toml on the development slice (python3 scripts/dev-sweep.py ...; each
    file names the sweep it was chosen by) and write the new sweep into the file;
  - the tests that pin the shipped model's figures (core/tests/{edit,ike,unike_collab}.rs and the eval-base test):
    run them, move each bar with the measurement named in the commit;
  - \`unike reproduce\` into results/ and README's tables, from one commit.
EOF
