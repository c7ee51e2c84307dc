set -x
export PYTHONPATH=$PWD/.exp/site:$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p .exp/out
python3 -c "import pyro, sklearn, torch; print(pyro.__version__, sklearn.__version__, torch.__version__, torch.cuda.is_available())"
nproc
for s in 0 1 2 3 4; do
  timeout 450 python3 benchmarks/sweeps/start_sweep.py --data .exp/data/mnist8k.npz --name mnist --seeds $s --device cuda --threads 1 --variants 5,10,50,1e-3 5,1,50,1e-3 20,3,20,1e-3 > .exp/out/log_mnist_$s.txt 2>&1 &
  timeout 450 python3 benchmarks/sweeps/start_sweep.py --data digits --name digits --seeds $s --device cuda --threads 1 --variants 5,10,50,1e-3 5,1,50,1e-3 20,3,20,1e-3 10,1,30,1e-3 > .exp/out/log_digits_$s.txt 2>&1 &
done
wait
cat .exp/out/*.jsonl > $OUT/all.jsonl
tail -n +1 .exp/out/log_* > $OUT/logs.txt
python3 -c "
import numpy as np, glob, os
np.savez_compressed(os.environ['OUT'] + '/arrays.npz', **{os.path.basename(f)[:-4]: np.load(f) for f in glob.glob('.exp/out/*.npy')})"
ls -la $OUT; nvidia-smi --query-gpu=name --format=csv
