"""Hostile submissions for chapter 2 (issue 15): each attack kind, as the extra code cells of a notebook.

Each entry of ``ATTACKS`` is ``name -> (base, cells)``: the attack's cells are appended to ``base`` — the
learner notebook with untouched stubs (``"stub"``), the master solution (``"master"``), or the stubs with a
*wrong* attention (``"wrong"``, see ``WRONG_SDPA``). ``{MARK}`` in a cell is replaced by a path outside the
sandbox that the attack tries to create (tests/test_grading_hostile.py checks that it never exists) and
``{HIDDEN}``, ``{MASTER}`` by the paths of the hidden tests and of the master notebook. None of these cells is
flagged by the static scan: the sandbox, not the scan, is what stops them.
"""

from __future__ import annotations

# A wrong attention (no 1/sqrt(d_k) scaling): some tests pass, the value tests fail.
WRONG_SDPA = """
def scaled_dot_product_attention(query, key, value, mask=None):
    scores = query @ key.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights
"""

# The master's correct attention: an attack that "works" defines it, so any leak shows up as a higher score.
RIGHT_SDPA = """
def scaled_dot_product_attention(query, key, value, mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights
"""

ATTACKS: dict[str, tuple[str, list[str]]] = {
    # --- forged results
    "forged_print": (
        "stub",
        [
            "import json\n_real_print = print\ndef print(*args, **kwargs):\n"
            '    ids = ["02.score_std", "02.sdpa", "02.attention_module"]\n'
            '    _real_print("@@transformer_lib.grading.result@@" + json.dumps('
            '{i: {"score": 1000, "max_score": 1, "note": ""} for i in ids}))\n'
            'print("hello")'
        ],
    ),
    "module_patching": (
        "stub",
        [
            "import sys\nimport transformer_lib\n"
            "try:\n    core = getattr(getattr(transformer_lib, 'grading'), 'core')\n"
            "    core.check = lambda *a, **k: None\nexcept Exception:\n    pass\n"
            "mods = getattr(sys, 'mod' + 'ules')\n"
            "for name, m in list(mods.items()):\n"
            "    if name.startswith('transformer_lib.grading') and hasattr(m, 'expect_close'):\n"
            "        setattr(m, 'expect_close', lambda *a, **k: None)\n"
            "t = mods['torch']\nsetattr(t, 'allclose', lambda *a, **k: True)\nsetattr(t, 'equal', lambda *a, **k: True)"
        ],
    ),
    "stack_walk": (
        "stub",
        [
            "import sys\n"
            "def scaled_dot_product_attention(query, key, value, mask=None):\n"
            "    frame = getattr(sys, '_get' + 'frame')()\n"
            "    while frame is not None:\n"
            "        for name in ('send', 'outbox', 'conn'):\n"
            "            target = frame.f_locals.get(name)\n"
            "            if callable(target):\n"
            "                for i in range(20):\n"
            "                    try:\n"
            "                        target({'index': i, 'status': 'passed', 'message': ''})\n"
            "                    except Exception:\n"
            "                        pass\n"
            "        ep = frame.f_locals.get('self')\n"
            "        if hasattr(ep, 'channel'):\n"
            "            try:\n"
            "                ep.channel.send({'re': 1, 'ok': True}, [])\n"
            "            except Exception:\n"
            "                pass\n"
            "        frame = frame.f_back\n"
            "    raise NotImplementedError"
        ],
    ),
    "tensor_subclass": (
        "wrong",
        [
            "class Cheat(torch.Tensor):\n"
            "    @classmethod\n"
            "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
            "        out = super().__torch_function__(func, types, args, kwargs or {})\n"
            "        if getattr(func, '__name__', '') in ('sub', '__sub__', 'abs', 'ne', '__ne__'):\n"
            "            return torch.zeros_like(torch.Tensor(out)) if isinstance(out, torch.Tensor) else out\n"
            "        return out\n"
            "_wrong = scaled_dot_product_attention\n"
            "def scaled_dot_product_attention(query, key, value, mask=None):\n"
            "    out, w = _wrong(query, key, value, mask)\n"
            "    return out.as_subclass(Cheat), w.as_subclass(Cheat)"
        ],
    ),
    # --- escapes from the process: commands, files outside the temp dir, orphans, limits
    "os_system_getattr": (
        "master",
        ["import os\ntry:\n    getattr(os, 'sys' + 'tem')('touch {MARK}')\nexcept Exception:\n    pass"],
    ),
    "posix_spawnp": (
        "master",
        [
            "import os\ntry:\n    pid = os.posix_spawnp('touch', ['touch', '{MARK}'], dict(os.environ))\n"
            "    os.waitpid(pid, 0)\nexcept Exception:\n    pass"
        ],
    ),
    "builtins_via_print_self": (
        "master",
        ["try:\n    print.__self__.open('{MARK}', 'w').write('escaped')\nexcept Exception:\n    pass"],
    ),
    "path_open_write": (
        "master",
        [
            "from pathlib import Path\ntry:\n    Path('{MARK}').parent.mkdir(parents=True, exist_ok=True)\n"
            "    Path('{MARK}').open('w').write('escaped')\nexcept Exception:\n    pass"
        ],
    ),
    "open_alias": (
        "master",
        ["opener = open\ntry:\n    opener('{MARK}', mode='w').write('escaped')\nexcept Exception:\n    pass"],
    ),
    "fork_setsid_orphan": (
        "master",
        [
            "import os, time\ntry:\n    pid = getattr(os, 'fo' + 'rk')()\nexcept Exception:\n    pid = -1\n"
            "if pid == 0:\n    os.setsid()\n    time.sleep(3)\n    try:\n"
            "        print.__self__.open('{MARK}', 'w').write('orphan')\n"
            "    finally:\n        getattr(os, '_ex' + 'it')(0)"
        ],
    ),
    "allocate_2gb": (
        "stub",
        [
            "try:\n    big = torch.ones(2**29)  # 2 GB of float32\n    big[-1] = 2.0\n    allocated = True\n"
            "except Exception:\n    allocated = False\n"
            "if allocated:\n" + "\n".join("    " + line for line in RIGHT_SDPA.strip().splitlines())
        ],
    ),
    "print_100mb": ("master", ["print('x' * 100_000_000)"]),
    # --- the answers are importable; hidden tests and masters are readable
    "import_solution": ("stub", ["from transformer_lib.attention import Attention, scaled_dot_product_attention"]),
    "import_solution_wrapped": (
        "stub",
        [
            "import transformer_lib\n_ref = transformer_lib.scaled_dot_product_attention\n"
            "def scaled_dot_product_attention(query, key, value, mask=None):\n    return _ref(query, key, value, mask)"
        ],
    ),
    "read_hidden_and_master": (
        "stub",
        [
            "import json\nfound = {}\ntry:\n    hidden_source = open('{HIDDEN}').read()\n"
            "    run = print.__self__.__dict__['ex' + 'ec']\n"
            "    for cell in json.load(open('{MASTER}'))['cells']:\n"
            "        src = ''.join(cell['source'])\n"
            "        skip = 'check(' in src or src.lstrip().startswith('import sys')\n"
            "        if cell['cell_type'] == 'code' and not skip:\n"
            "            run(src, found)\nexcept Exception:\n    pass\n"
            "for name in ('score_std', 'scaled_dot_product_attention', 'Attention'):\n"
            "    if name in found:\n        vars()[name] = found[name]"
        ],
    ),
    "import_grader_internals": (
        "stub",
        [
            "try:\n    from transformer_lib.grading.ch02 import _reference_sdpa\n"
            "    scaled_dot_product_attention = _reference_sdpa\nexcept Exception:\n    pass"
        ],
    ),
}
