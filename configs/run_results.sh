#!/usr/bin/env bash
# Reproduce docs/results.md (CPU-shortened schedules). Usage:
#   configs/run_results.sh mnist      # Table 2/11 setting + tightness (Table 6, experiment A)
#   configs/run_results.sh fashion    # Table 12 setting
# One torch thread per process (the numbers in docs/results.md were measured that way).
set -euo pipefail
which="${1:?mnist or fashion}"
R="${RELAXLAB:-.venv/bin/relaxlab}"
if [ "$which" = mnist ]; then
  cfg=configs/mnist_conv_eps03.toml; prefix=mnist; root=runs/results-mnist
  if [ ! -f "$root/mnist-conv-natural/tightness.md" ]; then
    "$R" train configs/mnist_conv_natural.toml --out "$root/mnist-conv-natural" --threads 1 --quiet
    "$R" tightness "$root/mnist-conv-natural/checkpoint.pt" -r all --eps-max 0.07 --points 11 --n 200 --threads 1
  fi
else
  cfg=configs/fashion_conv_eps01.toml; prefix=fashion; root=runs/results-fashion
fi
# method, relaxation, kappa_end, l1 (Table 8, CONV rows, eps_test = 0.3)
while IFS='|' read -r method relaxation kappa l1 slug; do
  run="$root/$prefix-$slug"
  resume=""; [ -f "$run/checkpoint.pt" ] && resume="--resume"   # continue an interrupted run
  [ -f "$run/history.json" ] || "$R" train "$cfg" --out "$run" --threads 1 --quiet $resume \
    --set method="\"$method\"" --set relaxation="\"$relaxation\"" --set kappa_end="$kappa" --set l1="$l1" \
    --set name="\"$prefix-$slug\""
  # certify with the training relaxation on the first 1,000 test images (PGD: 100 steps of 0.01)
  [ -f "$run/certified.txt" ] || "$R" certify "$run/checkpoint.pt" --n 1000 --threads 1 > "$run/certified.txt"
  cat "$run/certified.txt"
done <<'TABLE'
certified|IBP|0.5|5e-6|ibp
certified|CROWN-IBP (R)|0.5|5e-6|crown-ibp-r
crown-ibp|IBP|0.0|5e-6|crown-ibp
certified|hBox|0.5|5e-5|hbox
certified|DeepZ|0.0|5e-5|deepz
certified|CROWN|0.0|0.0|crown
TABLE
"$R" report --store "$root/results.sqlite" --out "$root"                  # $root/report.md
"$R" report --store "$root/results.sqlite" --format csv --out "$root"     # $root/report.csv
