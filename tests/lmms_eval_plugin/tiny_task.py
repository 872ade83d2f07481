"""A tiny RefCOCO-REC-shaped lmms-eval task, built offline: rows saved with ``datasets``, images generated.

``build(folder)`` writes::

    folder/data/            a DatasetDict {"val": 3 rows} (datasets.save_to_disk) with RefCOCO's columns:
                            question_id, image, question, answer (a list of expressions), bbox (x, y, w, h),
                            file_name; lmms-eval's REC process_docs explodes it to one row per expression
    folder/tasks/TASK.yaml  the task: lmms-eval's own RefCOCO REC template (prompt, box parsing, IoU /
                            ACC@k metrics) on that data, loaded with load_from_disk, 8 new tokens

and returns the include folder for ``--include_path``. The task's name matches the built-in
expression mapping (``refcoco_bbox_rec*``: the expression is the row's ``answer``).
"""

from __future__ import annotations

from pathlib import Path

TASK = "refcoco_bbox_rec_tiny"
# (expressions of the row, box x, y, w, h, image width, height, seed); 4 expressions in all
ROWS = [
    (["the red car"], 10, 20, 60, 40, 160, 120, 11),
    (["the man on the left", "a man in a red shirt"], 5, 5, 40, 90, 120, 160, 12),
    (["the cat in the tree"], 30, 30, 50, 50, 150, 150, 13),
]
NUM_SAMPLES = sum(len(r[0]) for r in ROWS)
QUESTION = "a photo of the sky"  # every row's "question": a fixed text, as RefCOCO's instruction (short: 16 positions)


def image(seed: int, size):
    """A random RGB PIL image of ``size`` (width, height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def build(folder) -> Path:
    import datasets
    import lmms_eval

    folder = Path(folder)
    cols = {"question_id": [], "image": [], "question": [], "answer": [], "bbox": [], "file_name": []}
    for i, (exprs, x, y, w, h, iw, ih, seed) in enumerate(ROWS):
        cols["question_id"].append(f"tiny-{i}")
        cols["image"].append(image(seed, (iw, ih)))
        cols["question"].append(QUESTION)
        cols["answer"].append(list(exprs))
        cols["bbox"].append([float(x), float(y), float(w), float(h)])
        cols["file_name"].append(f"tiny_{i}.jpg")
    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                  "question": datasets.Value("string"),
                                  "answer": datasets.Sequence(datasets.Value("string")),
                                  "bbox": datasets.Sequence(datasets.Value("float64")),
                                  "file_name": datasets.Value("string")})
    datasets.DatasetDict({"val": datasets.Dataset.from_dict(cols, features=features)}).save_to_disk(folder / "data")
    template = Path(lmms_eval.__file__).parent / "tasks" / "refcoco" / "_default_template_bbox_rec_yaml"
    tasks = folder / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        f"include: {template}\n"
        f"dataset_path: {folder / 'data'}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        "test_split: val\n"
        "generation_kwargs:\n  until:\n    - \"ASSISTANT:\"\n  max_new_tokens: 8\n")
    return tasks
