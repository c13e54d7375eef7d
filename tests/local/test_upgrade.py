"""`tierplace up` on a fresh machine: the quick profile answers first, full quality follows.

Real tritonservers, router and Prometheus. The "quick" weights here are the tiny variants with
their exit heads zeroed, so every answer is exactly 50/50 until the trained ones are swapped
in; the trainer is replaced by a script that drops the trained tiny variants into the staging
folder one by one (the real one takes an hour). What is under test is the swap: each tier
reloads its weights while the stream of requests sees nothing but 200s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tierplace import paths
from tierplace.local.commands import infer, rows
from tierplace.local.probe import RequestStream, tally, until
from tierplace.local.stack import Stack, StackSpec
from tierplace.local.supervise import Event
from tierplace.local.triton import TritonServer
from tierplace.local.upgrade import CHILD, Upgrade, quick_variants
from tierplace.model.profiles import FULL, QUICK, trained_profile

pytestmark = [pytest.mark.triton, pytest.mark.prometheus, pytest.mark.slow]

VARIANTS = ["minilm-l2", "minilm-l6", "mpnet-base"]


def quick_home(trained: Path, home: Path) -> Path:
    """``trained``'s variants marked quick, with every exit head answering 50/50."""
    for variant in VARIANTS:
        target = home / "models" / variant
        shutil.copytree(trained / "models" / variant, target)
        heads = load_file(str(target / "exits.safetensors"))
        save_file(
            {k: torch.zeros_like(v) for k, v in heads.items()}, str(target / "exits.safetensors")
        )
        meta = json.loads((target / "tierplace.json").read_text())
        meta["training"]["profile"] = QUICK
        (target / "tierplace.json").write_text(json.dumps(meta))
    return home


def trainer(source: Path, staging: Path, fail_after: int | None = None) -> list[str]:
    """A stand-in for the full training: each trained variant lands in ``staging`` a second
    apart, the cloud first (as the teacher is); ``fail_after`` variants, then exit code 3."""
    code = f"""
import sys, time
from pathlib import Path
from tierplace.model.profiles import install
for i, v in enumerate(["mpnet-base", "minilm-l2", "minilm-l6"]):
    if i == {fail_after!r}:
        sys.exit(3)
    time.sleep(1)
    install(Path({str(source)!r}) / v, Path({str(staging)!r}) / v)
"""
    return [sys.executable, "-c", code]


def answer_probs(router: str) -> list[float]:
    return [max(r["probs"]) for r in rows(infer(router, "sentiment", ["a fine film"], None))]


async def test_quick_weights_answer_then_each_tier_switches_to_full_without_a_failed_request(
    tiny_model_home: Path, tmp_path: Path
) -> None:
    home = quick_home(tiny_model_home, tmp_path / "home")
    spec = StackSpec(router_port=0, prometheus_port=0, run_dir=tmp_path / "run")
    stack = Stack(spec, home)
    try:
        await stack.start()
        state = json.loads(stack.state_file.read_text())
        router = state["router"]
        assert state["weights"] == dict.fromkeys(VARIANTS, QUICK)
        assert await asyncio.to_thread(answer_probs, router) == [0.5]

        # A trainer that dies leaves the quick profile serving, and says so.
        upgrade = stack.upgrade(trainer(tiny_model_home / "models", home / "staging" / "models", 1))
        assert upgrade is not None
        assert not await asyncio.wait_for(upgrade.run(), 120)
        failed = [e for e in stack.events if e.child == CHILD and e.kind == "crashed"]
        assert failed and "quick profile keeps serving" in failed[-1].message
        assert "code 3" in failed[-1].message
        # The cloud variant it finished was swapped in; the others are still quick.
        assert quick_variants(home, VARIANTS) == ["minilm-l2", "minilm-l6"]

        # The next trainer resumes; requests stream through every swap.
        upgrade = stack.upgrade(trainer(tiny_model_home / "models", home / "staging" / "models"))
        assert upgrade is not None
        stream = RequestStream(router, max_requests=5000)
        streaming = asyncio.create_task(stream.run())
        try:
            await until(lambda: len(stream.answers) > 5, 60, "the stream under way")
            assert await asyncio.wait_for(upgrade.run(), 180)
            seen = len(stream.answers)
            await until(lambda: len(stream.answers) > seen + 5, 60, "answers after the swaps")
        finally:
            stream.stop()
            await streaming
        counts = tally(stream.answers)
        assert counts["ok_200"] == counts["requests"], counts  # no failed request in a swap
        # The trained heads answer now, in the same processes.
        assert await asyncio.to_thread(answer_probs, router) != [0.5]
        state = json.loads(stack.state_file.read_text())
        assert state["weights"] == dict.fromkeys(VARIANTS, FULL)
    finally:
        await stack.stop()

    upgraded = [e.message for e in stack.events if e.child == CHILD and e.kind == "upgraded"]
    assert any(m.startswith("full quality") for m in upgraded), upgraded
    for variant in VARIANTS:
        assert trained_profile(home / "models" / variant) == FULL
        assert any(
            m.startswith(f"{variant}: the fully trained variant now answers") for m in upgraded
        )
    assert not (home / "staging").exists()  # staging removed once everything is served


async def test_a_tier_that_cannot_reload_is_said_and_keeps_its_weights_for_its_restart(
    tiny_model_home: Path, tmp_path: Path
) -> None:
    home = quick_home(tiny_model_home, tmp_path / "home")
    down = TritonServer(paths.model_repository(), ["mpnet-base"], home)  # never started
    events: list[Event] = []
    upgrade = Upgrade(
        home,
        {"mpnet-base": [down]},
        tmp_path / "train.log",
        events.append,
        trainer(tiny_model_home / "models", home / "staging" / "models", fail_after=1),
    )
    assert not await asyncio.wait_for(upgrade.run(), 120)
    said = [e.message for e in events if e.kind == "crashed"]
    assert any(f"tritonserver {down.http_url} could not load" in m for m in said), said
    assert any("until their tritonserver restarts" in m for m in said), said
    assert not any(e.kind == "upgraded" for e in events)  # never claimed
    # The trained variant is in place on disk: the server's next start loads it.
    assert trained_profile(home / "models" / "mpnet-base") == FULL
