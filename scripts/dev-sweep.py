#!/usr/bin/env python3
"""Development-slice sweep of a method's hyper-parameters for the shipped model (how every hparams/<method>/default.toml
was chosen): for each setting of the grid it rewrites hparams/<method>/default.toml, runs
`target/release/unike bench --methods <method> --split dev --n N --task vqa|caption --json`, and prints the mean of
Rel., T-Gen., M-Gen., T-Loc. and M-Loc. (v2) per task and over both. The file is restored at the end.

    python3 scripts/dev-sweep.py memit 30 '{"mom2_update_weight": [15000, 100], "layers": [[0, 1], [2, 3]]}'
"""
import json, subprocess, sys, itertools, os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
method, n = sys.argv[1], int(sys.argv[2])
grid = json.loads(sys.argv[3])  # {"key": [values...]}
base = open(f'hparams/{method}/default.toml').read()
orig = base
def setv(text, k, v):
    out = []
    for line in text.splitlines():
        if line.split('=')[0].strip() == k:
            line = f'{k} = {json.dumps(v) if isinstance(v, (list, str)) else v}'
        out.append(line)
    return '\n'.join(out) + '\n'
keys = list(grid)
try:
    for combo in itertools.product(*[grid[k] for k in keys]):
        text = orig
        for k, v in zip(keys, combo):
            text = setv(text, k, v)
        open(f'hparams/{method}/default.toml', 'w').write(text)
        scores = []
        parts = []
        for task in ['vqa', 'caption']:
            out = subprocess.run(['./target/release/unike', 'bench', '--methods', method, '--split', 'dev', '--n', str(n),
                                  '--task', task, '--json'], capture_output=True, text=True)
            if out.returncode != 0:
                parts.append(f'{task}: ERROR {out.stderr.strip().splitlines()[-1]}')
                continue
            m = json.loads(out.stdout)['results'][0]['metrics']
            s = sum(m[x] for x in ['reliability', 't_generality', 'm_generality', 't_locality', 'm_locality']) / 5
            scores.append(s)
            parts.append(f"{task}: rel {m['reliability']:.1f} tgen {m['t_generality']:.1f} mgen {m['m_generality']:.1f} tloc {m['t_locality']:.1f} mloc {m['m_locality']:.1f} -> {s:.1f}")
        mean = sum(scores) / len(scores) if len(scores) == 2 else float('nan')
        print(dict(zip(keys, combo)), f'score {mean:.1f} |', ' | '.join(parts), flush=True)
finally:
    open(f'hparams/{method}/default.toml', 'w').write(orig)
