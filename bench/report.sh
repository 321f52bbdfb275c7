#!/usr/bin/env bash
# Turns bench records (bench/lib.sh) into a Markdown report and a chart:
# per figure the median, min–max and number of runs, and for a figure
# with a baseline the ratio of the medians.
#   bench/report.sh RECORDS OUT.md [OUT.png]
set -euo pipefail
records=$1
md=$2
png=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# one line per (group, figure): group, figure, median, min, max, n, baseline
sort -t$'\t' -k1,1 -k2,2 -k3,3g "$records" | awk -F'\t' '
  function flush() {
    if (n == 0) return
    med = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    printf "%s\t%s\t%.6g\t%.6g\t%.6g\t%d\t%s\n", g, f, med, v[1], v[n], n, b
  }
  { if ($1 != g || $2 != f) { flush(); g = $1; f = $2; n = 0; b = $4 }
    v[++n] = $3 }
  END { flush() }' >"$tmp/stats"
# the ratio to the baseline's median, when there is one
awk -F'\t' 'NR == FNR { m[$1 "\t" $2] = $3; next }
  { r = ($7 != "" && m[$1 "\t" $7] > 0) ? $3 / m[$1 "\t" $7] : ""
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", $1, $2, $3, $4, $5, $6, $7, r }' \
  "$tmp/stats" "$tmp/stats" >"$tmp/full"
fmt() { awk -v x="$1" 'BEGIN { if (x >= 1e6) printf "%.2f M", x / 1e6; else if (x >= 1e4) printf "%.0f k", x / 1e3; else printf "%.4g", x }'; }
{
  echo "# Benchmark results"
  echo
  echo "Written by \`make bench\` (bench/all.sh) on $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "$(uname -m).  Each figure: the median of its runs, the smallest and"
  echo "largest, and for a figure with a baseline the ratio of the medians."
  echo "bench/README.md explains each comparison and where the time goes."
  for g in $(cut -f1 "$tmp/full" | uniq); do
    echo
    echo "## $g"
    echo
    echo "| figure | median | min – max | runs | baseline | ratio |"
    echo "|---|---|---|---|---|---|"
    awk -F'\t' -v g="$g" '$1 == g' "$tmp/full" | while IFS=$'\t' read -r _ f med lo hi n b r; do
      ratio=""
      [ -n "$r" ] && ratio=$(awk -v r="$r" 'BEGIN { printf "%.0f%%", r * 100 }')
      echo "| $f | $(fmt "$med") | $(fmt "$lo") – $(fmt "$hi") | $n | $b | $ratio |"
    done
  done
} >"$md"
if [ -n "$png" ]; then
  if command -v gnuplot >/dev/null; then
    # short labels: "redis json 4p/4w enqueue" and the like
    awk -F'\t' '$8 != "" {
        g = $1; sub(/:\/\//, "", g); f = $2
        gsub(/ producer\(s\) and worker thread\(s\)/, "p/w", f)
        gsub(/ producer\(s\), /, "p/", f); gsub(/ worker thread\(s\)/, "w", f)
        gsub(/batches of /, "b", f); gsub(/, /, " ", f); gsub(/\/s$/, "", f)
        gsub(/^evq /, "", f)
        printf "\"%s %s\" %.3f\n", g, f, $8 * 100 }' "$tmp/full" >"$tmp/ratios"
    gnuplot <<GP
set terminal pngcairo size 1300,750 noenhanced font ",9"
set output "$png"
set title "evq against each backend's baseline (ratio of medians, %)"
set style fill solid 0.7
set boxwidth 0.7
set logscale y
set yrange [1:3000]
set ylabel "% of baseline (log scale)"
set xtics rotate by -45 left
set grid ytics
set bmargin 12
plot "$tmp/ratios" using 0:2:xtic(1) with boxes notitle, \
  80 with lines dt 2 title "80% (the bars of issues 5-7)", \
  1000 with lines dt 3 title "10x (BullMQ bar)"
GP
  else
    echo "report.sh: gnuplot is not installed, no chart" >&2
  fi
fi
