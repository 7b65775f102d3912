"""The object detector streams images from disk: memory does not grow with their number."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import json, sys, threading, time
import pandas as pd
import toolkit as tc

folder, n = sys.argv[1], int(sys.argv[2])
index = json.load(open(folder + "/index.json"))[:n]
data = pd.DataFrame({"image": [folder + "/" + r["file"] for r in index],
                     "annotations": [r["annotations"] for r in index]})

def anon_kib():
    # Anonymous memory only: the feature cache is a file-backed memory map whose
    # pages the kernel may keep mapped (and count in RSS) but can always drop.
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon_kib())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
model = tc.object_detector.create(data, max_iterations=20, batch_size=8, random_seed=0,
                                  verbose=False)
done.set()
peak[0] = max(peak[0], anon_kib())
print(json.dumps({"peak_anon_kib": peak[0]}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    import toolkit as tc
    from PIL import Image
    n_small, n_large = 40, 300
    scenes = tc.datasets.detection_scenes(n_large, random_seed=3)
    index = []
    for i, (img, ann) in enumerate(zip(scenes["image"], scenes["annotations"])):
        name = f"scene{i:04d}.png"
        Image.fromarray(img).save(tmp_path / name)
        index.append({"file": name, "annotations": ann})
    (tmp_path / "index.json").write_text(json.dumps(index))
    script = tmp_path / "measure.py"
    script.write_text(textwrap.dedent(SCRIPT))

    # Two sources of growth that are not the toolkit's are switched off, so that
    # what is measured is whether images and features are streamed:
    # * MKL-DNN's primitive caches and memory pools fill up over the first ~50
    #   network calls (measured separately: +7 MiB, then flat over 300 calls);
    # * glibc raises its mmap threshold after large blocks are freed and then serves
    #   them from a heap that fragments: +11 to +38 MiB at 200 images, varying from
    #   run to run. A fixed threshold returns large blocks to the system.
    # With both, peak memory before head training was 435, 436 and 437 MiB at 40,
    # 200 and 400 images.
    env = dict(os.environ, MXNET_MKLDNN_ENABLED="0", MALLOC_MMAP_THRESHOLD_="131072")

    def peak(n):
        out = subprocess.run([sys.executable, str(script), str(tmp_path), str(n)],
                             capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_anon_kib"] / 1024

    small, large = peak(n_small), peak(n_large)
    print(f"peak anonymous memory: {small:.0f} MiB at {n_small} images, "
          f"{large:.0f} MiB at {n_large}")
    # Held in memory, 260 more 224x224 RGB images would take 37 MiB decoded and their
    # cached features 42 MiB. Measured: +0 to +7 MiB over four runs. Control: the same
    # measurement with the script keeping every decoded image (nothing else changed)
    # grew by 35 MiB (434 -> 470).
    assert large - small < 15, (small, large)
