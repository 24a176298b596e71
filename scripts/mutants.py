#!/usr/bin/env python3
"""Proves the tests catch every undoing of the fix.

Applies each reversion in scripts/mutants.toml, one at a time, to a scratch
copy of the tree, runs what `make test` runs (the workspace tests, then the
failpoint suite), and prints which tests caught it. Exits non-zero when a
reversion survives, does not apply, or does not compile.

    python3 scripts/mutants.py                # all
    python3 scripts/mutants.py --only NAME    # names containing NAME
    python3 scripts/mutants.py --list
    python3 scripts/mutants.py --quick        # each reversion's `hint` first

`--quick`: a reversion may name the test that catches it (`hint`, one of the
suites below narrowed to a test filter, so a subset of `make test`). Quick
mode builds the binaries, runs the hint, and counts the reversion caught when
the hint fails; when the hint passes (or there is none) it runs every suite
as without `--quick`. A reversion is never let off by its hint: a hint that
misses only costs the full run.

`--resume`: every verdict is recorded in target/mutants/results.json with
the reversion's edits and a digest of the tree's code (every tracked file
but the Markdown ones and benches/: prose does not change what a test
catches, and no suite builds a bench). A resumed
run reuses a recorded `caught` when both still match, so one full run can
span interruptions; anything else (a survivor, a changed file) is run again.
The table at the end covers every reversion either way.

The scratch copy builds into target/mutants (its own CARGO_TARGET_DIR: the
scratch crates have the same artifact names as this tree's, and sharing
target/ would leave mutated test binaries behind that cargo takes as fresh).
The first run builds the dependencies there once.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

# One suite's run, builds included, beyond which a reversion counts as caught
# by a hang (no test of ours runs near this long).
SUITE_TIMEOUT = 1500
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = [
    # The binaries tests/process spawns, from the mutated tree.
    ["cargo", "build", "--workspace"],
    ["cargo", "test", "--workspace"],
    ["cargo", "test", "--features", "failpoints", "--test", "failpoints"],
    ["cargo", "test", "-p", "tikv-server", "--features", "failpoints", "--test", "failpoints"],
    # The queue's loom model, in a target dir of its own (see the Makefile).
    ["env", "RUSTFLAGS=--cfg loom", "CARGO_TARGET_DIR=" + os.path.join(ROOT, "target", "mutants-loom"),
     "cargo", "test", "-p", "raft_queue", "--test", "loom", "--release"],
]


def edits(m):
    """A reversion's edits: `edits = [{file, old, new}, ...]` when one
    behaviour rests on more than one place, else its own file/old/new."""
    if "edits" in m:
        return [(e.get("file", m.get("file")), e["old"], e["new"]) for e in m["edits"]]
    return [(m["file"], m["old"], m["new"])]


def load():
    with open(os.path.join(ROOT, "scripts", "mutants.toml"), "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    names = [m["name"] for m in mutants]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        sys.exit("mutants.toml: duplicate names %s" % sorted(dup))
    unsectioned = [m["name"] for m in mutants if not m.get("section")]
    if unsectioned:
        sys.exit("mutants.toml: no README section for %s" % unsectioned)
    # A section names a heading of the README, so a reader finds the promise.
    with open(os.path.join(ROOT, "README.md")) as f:
        headings = {h.strip() for h in re.findall(r"^#+ (.*)$", f.read(), re.M)}
    unknown = sorted({m["section"] for m in mutants if m["section"] not in headings})
    if unknown:
        sys.exit("mutants.toml: sections that are no README heading: %s" % unknown)
    return mutants


def hint_of(m):
    """The reversion's hint as argv, checked to be a suite narrowed by test
    name filters (so whatever it catches, `make test` catches)."""
    if "hint" not in m:
        return None
    argv = shlex.split(m["hint"])
    for suite in SUITES[1:]:
        if argv[:len(suite)] == suite and all(not a.startswith("-") for a in argv[len(suite):]):
            return argv
    sys.exit("mutants.toml: %s: hint %r is not a suite of make test narrowed to test names"
             % (m["name"], m["hint"]))


def run_hint(tree, env, argv):
    """Builds the binaries and runs the hint; (caught, failing tests, log)."""
    log = ""
    for cmd in (SUITES[0], argv):
        p = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           timeout=SUITE_TIMEOUT)
        log += p.stdout
        if p.returncode != 0:
            failed = re.findall(r"^test (\S+) \.\.\. FAILED$", p.stdout, re.M)
            # A build error is not a catch: the full run reports it.
            return bool(failed), failed, log
    return False, [], log


def tracked_files():
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return [f for f in out.splitlines() if f and not f.startswith("target/")]


def tree_digest():
    """A digest of the code a reversion is tested against: every tracked
    file but the Markdown ones and the benchmarks (`cargo test` builds no
    bench target, so no suite of `make test` compiles `benches/`)."""
    h = hashlib.sha256()
    for f in sorted(tracked_files()):
        path = os.path.join(ROOT, f)
        if f.endswith(".md") or f.startswith("benches/") or not os.path.isfile(path):
            continue
        h.update(f.encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def edits_digest(m):
    return hashlib.sha256(json.dumps(edits(m)).encode()).hexdigest()


RESULTS = os.path.join(ROOT, "target", "mutants", "results.json")


def load_results(tree):
    try:
        with open(RESULTS) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return {}
    return r.get("results", {}) if r.get("tree") == tree else {}


def save_results(tree, results):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".tmp", "w") as f:
        json.dump({"tree": tree, "results": results}, f, indent=1)
    os.replace(RESULTS + ".tmp", RESULTS)


def copy_tree(dst):
    for f in tracked_files():
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))


def run_suites(tree, env):
    """Runs the suites until one fails; returns (status, failing tests, log)."""
    for cmd in SUITES:
        p = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=SUITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            # A reversion that makes a test hang is caught too; end the
            # whole process group (cargo and the test binary it runs).
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            return "caught", ["(%s hung: killed after %ds)" % (" ".join(cmd[1:]), SUITE_TIMEOUT)], out
        if p.returncode == 0:
            continue
        failed = re.findall(r"^test (\S+) \.\.\. FAILED$", out, re.M)
        if failed:
            return "caught", failed, out
        if "error[E" in out or "could not compile" in out:
            return "no-compile", [], out
        binary = re.findall(r"to rerun pass `([^`]*)`", out)
        panicked = re.findall(r"^thread '([^']+)' .*panicked", out, re.M)
        return "caught", ["(%s: %s)" % (" ".join(binary) or " ".join(cmd[1:]),
                                        ", ".join(sorted(set(panicked))) or "exited non-zero")], out
    return "survived", [], ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run the mutants whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="only check that every reversion applies to the tree as it is "
                         "(run by `make test`: a code change must not silently disarm one)")
    ap.add_argument("--quick", action="store_true",
                    help="run each reversion's hint first; the full suites only when it passes")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the verdicts `caught` recorded for this tree's code")
    args = ap.parse_args()
    mutants = load()
    for m in mutants:
        hint_of(m)
    if args.only:
        mutants = [m for m in mutants if args.only in m["name"]]
    if args.list:
        for m in mutants:
            print("%-36s [%s] %s" % (m["name"], m["section"], m["promise"]))
        return 0
    # Every reversion must apply to the tree as it is now.
    stale = []
    for m in mutants:
        for f, old, _ in edits(m):
            text = open(os.path.join(ROOT, f)).read()
            if text.count(old) != 1:
                stale.append("%s: `old` found %d times in %s" % (m["name"], text.count(old), f))
    if stale:
        print("\n".join(stale))
        return 2
    if args.check:
        print("mutants: all %d reversions apply to this tree" % len(mutants))
        return 0

    tree = tree_digest()
    results = load_results(tree)
    scratch = tempfile.mkdtemp(prefix="mutants-")
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target", "mutants"))
    rows = []
    try:
        copy_tree(scratch)
        for i, m in enumerate(mutants, 1):
            earlier = results.get(m["name"])
            if args.resume and earlier and earlier["status"] == "caught" \
                    and earlier["edits"] == edits_digest(m):
                rows.append((m, "caught", earlier["failed"]))
                print("[%d/%d] %-36s %-28s %-10s %4s %s" % (
                    i, len(mutants), m["name"], m["section"], "caught", "-",
                    "(recorded for this tree) " + ", ".join(earlier["failed"][:3])), flush=True)
                continue
            originals = {}
            for f, old, new in edits(m):
                path = os.path.join(scratch, f)
                originals.setdefault(path, open(path).read())
                current = open(path).read()  # earlier edits of this file kept
                with open(path, "w") as fh:
                    fh.write(current.replace(old, new, 1))
            t = time.time()
            hint = hint_of(m) if args.quick else None
            caught = False
            if hint:
                try:
                    caught, failed, out = run_hint(scratch, env, hint)
                except subprocess.TimeoutExpired:
                    caught = False
            if caught:
                status = "caught"
            else:
                status, failed, out = run_suites(scratch, env)
            for path, text in originals.items():
                with open(path, "w") as fh:
                    fh.write(text)
            if out:
                logs = os.path.join(ROOT, "target", "mutants", "logs")
                os.makedirs(logs, exist_ok=True)
                with open(os.path.join(logs, m["name"] + ".log"), "w") as f:
                    f.write(out)
            rows.append((m, status, failed))
            results[m["name"]] = {"status": status, "failed": failed,
                                  "edits": edits_digest(m), "secs": round(time.time() - t)}
            save_results(tree, results)
            print("[%d/%d] %-36s %-28s %-10s %4.0fs %s" % (
                i, len(mutants), m["name"], m["section"], status, time.time() - t,
                ", ".join(failed[:3]) + (" (+%d)" % (len(failed) - 3) if len(failed) > 3 else "")),
                flush=True)
            if status == "no-compile":
                print(out[-3000:])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print("| README section | reversion | promise | caught by |")
    print("|---|---|---|---|")
    for m, status, failed in sorted(rows, key=lambda r: r[0]["section"]):
        who = ", ".join(f.split("::")[-1] for f in failed[:3]) or status.upper()
        if len(failed) > 3:
            who += " (+%d)" % (len(failed) - 3)
        print("| %s | %s | %s | %s |" % (m["section"], m["name"], m["promise"], who))
    bad = [m["name"] for m, s, _ in rows if s != "caught"]
    print()
    print("%d reversions, %d caught, %d not caught%s" % (
        len(rows), len(rows) - len(bad), len(bad), (": " + ", ".join(bad)) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
