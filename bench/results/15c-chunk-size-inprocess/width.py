import json, shutil, sys, numpy as np
from pathlib import Path
from bench import baselines, workloads
from bench.stats import Sustained
res={}
for w in [int(x) for x in sys.argv[1:]]:
    d=Path(f"/tmp/sw/sentiment/{w}"); shutil.rmtree(d, ignore_errors=True); shutil.copytree("models/sentiment/2", d)
    m=json.loads((d/"manifest.json").read_text()); m["preprocessing"]["chunk_tokens"]=w; (d/"manifest.json").write_text(json.dumps(m))
    wl=workloads.sentiment(d, 1275)
    runs=[baselines.ort_sentiment_closed(wl, Sustained(64, 4, 1)) for _ in range(2)]
    print(w, [round(r.tokens_per_s) for r in runs], flush=True)
wl=workloads.sentiment(Path("models/sentiment/1"), 1275)
print("v1 step", [round(baselines.ort_sentiment_closed(wl, Sustained(64, 4, 1)).tokens_per_s) for _ in range(2)])
