export PYTHONPATH=$PWD/.exp/site:$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p .exp/out
V="20,3,20 30,3,20 20,3,10 20,2,20 40,3,20"
for s in 0 1 2 3 4; do
  timeout 290 python3 benchmarks/sweeps/schedule_sweep.py --data .exp/data/mnist8k.npz --name mnist --seed $s --variants $V > .exp/out/log_mnist_$s.txt 2>&1 &
  timeout 290 python3 benchmarks/sweeps/schedule_sweep.py --data digits --name digits --seed $s --variants $V > .exp/out/log_digits_$s.txt 2>&1 &
done
wait
cat .exp/out/*.jsonl > $OUT/all.jsonl
tail -n +1 .exp/out/log_* > $OUT/logs.txt
