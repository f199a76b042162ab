#!/usr/bin/env python3
"""ci/mutants.py: the bookkeeping half of ci/mutants (issue 10, point 2).

A sweep spans several commits: shards run at different commits, and an edit
moves the lines that name a mutant ("file:line:col: replace ..."). This file
keeps one answer to "which mutants in scope have been tested, with what
outcome", so that the report and the `remaining` run agree:

  scope NEW_LIST   adopt NEW_LIST (cargo mutants --list at HEAD) as the scope;
                   mutants whose lines moved are recorded in mutants/moved.tsv
                   (old name <TAB> new name), matched per file by the mutation
                   text and its rank among equal texts, so that earlier
                   outcomes carry over.
  remaining        print the mutants in scope with no outcome yet.
  open             print those and the survivors no reason explains: what a
                   rerun after new tests must run (`ci/mutants rerun-open`).
  report           write mutants/REPORT.md.
"""
import os
import re
import subprocess
import sys

KINDS = ["caught", "missed", "timeout", "unviable"]
SCOPE = "mutants/scope.txt"
MOVED = "mutants/moved.tsv"


def read_list(path):
    return [l.rstrip("\n") for l in open(path)] if os.path.exists(path) else []


def tsv_pairs(path):
    for line in read_list(path):
        if line and not line.startswith("#"):
            yield tuple(line.split("\t", 1))


def position_free(name):
    """The mutant's name without its line and column: what stays when lines move."""
    return re.sub(r"^([^:]+):\d+:\d+: ", r"\1: ", name)


def ranked(names):
    """(position-free name, rank among equal ones) -> name, in listing order."""
    seen, out = {}, {}
    for n in names:
        key = position_free(n)
        seen[key] = seen.get(key, 0) + 1
        out[(key, seen[key])] = n
    return out


def adopt_scope(new_path):
    old = [l for l in read_list(SCOPE) if l]
    new = [l for l in read_list(new_path) if l]
    old_ranked, new_ranked = ranked(old), ranked(new)
    moves = [(n, new_ranked[k]) for k, n in old_ranked.items()
             if k in new_ranked and new_ranked[k] != n]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    if moves:
        with open(MOVED, "a") as f:
            if not os.path.exists(MOVED) or os.path.getsize(MOVED) == 0:
                f.write("# old name\tname after its lines moved (ci/mutants scope)\n")
            f.write(f"# scope adopted at {commit}\n")
            for a, b in moves:
                f.write(f"{a}\t{b}\n")
    gone = [n for k, n in old_ranked.items() if k not in new_ranked]
    with open(SCOPE, "w") as f:
        f.write("\n".join(new) + "\n")
    print(f"scope: {len(new)} mutants at {commit}; {len(moves)} moved, "
          f"{len(gone)} no longer exist (their code was removed)")


def moves_by_adoption():
    """mutants/moved.tsv by section: [(time of the adopting commit, {old: new})]."""
    sections = []
    for line in read_list(MOVED):
        if line.startswith("# scope adopted at "):
            sections.append((commit_time(line.split()[-1]), {}))
        elif line and not line.startswith("#") and sections:
            old, new = line.split("\t", 1)
            sections[-1][1][old] = new
    return sorted(sections, key=lambda s: s[0])


def current_name(name, run_time, sections):
    """A run's mutant name as the current scope names it: each scope adopted
    after the run's commit renames it once, in order."""
    for adopted, moves in sections:
        if adopted > run_time:
            name = moves.get(name, name)
    return name


def commit_time(commit):
    r = subprocess.run(["git", "log", "-1", "--format=%ct", commit], capture_output=True, text=True)
    return int(r.stdout.strip() or 0)


def runs(root):
    """Each run folder, oldest commit first, so that later outcomes replace earlier ones."""
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, name)
        commit = (read_list(os.path.join(d, "commit.txt")) or ["?"])[0][:10]
        found.append((commit_time(commit), name, d, commit, os.path.exists(os.path.join(d, "partial"))))
    for _, name, d, commit, partial in sorted(found):
        yield name, d, commit, partial


def outcomes():
    """Outcome per mutant (by its name in the current scope), where it came from, and per-run counts.

    The unit tier comes first (a mutant the unit tests catch is caught by the
    whole suite, which runs them first; one they miss still needs the whole
    suite), then full-suite shards, then targeted reruns, each replacing what
    came before for the mutants it ran.
    """
    sections = moves_by_adoption()
    outcome, where, rows = {}, {}, []
    for tier, root in [("unit", "mutants/unit"), ("shard", "mutants/shards"), ("rerun", "mutants/reruns")]:
        for name, d, commit, partial in runs(root):
            renamed = dict((new, old) for old, new in tsv_pairs(os.path.join(d, "renamed.tsv")))
            counts = {}
            for kind in KINDS:
                lines = [l for l in read_list(os.path.join(d, kind + ".txt")) if l]
                counts[kind] = len(lines)
                for m in lines:
                    if tier == "unit" and kind == "missed":
                        continue
                    # A rerun's renamed.tsv names the mutant as its earlier run did.
                    key = current_name(renamed.get(m, m), commit_time(commit), sections)
                    outcome[key] = kind
                    where[key] = f"{tier} {name} at {commit}" + (f", as {m}" if key != m else "")
            rows.append((tier, name, commit, partial, counts))
    return outcome, where, rows


def remaining():
    outcome, _, _ = outcomes()
    for m in read_list(SCOPE):
        if m and m not in outcome:
            print(m)


def open_mutants():
    """Untested mutants in scope, then survivors without an equivalence reason."""
    outcome, _, _ = outcomes()
    equivalent = dict(tsv_pairs("mutants/equivalent.tsv"))
    scope = [m for m in read_list(SCOPE) if m]
    for m in scope:
        if m not in outcome or (outcome[m] == "missed" and m not in equivalent):
            print(m)


def report():
    equivalent = dict(tsv_pairs("mutants/equivalent.tsv"))
    outcome, where, rows = outcomes()
    scope = [l for l in read_list(SCOPE) if l]
    in_scope = set(scope)
    retired = sorted(m for m in outcome if m not in in_scope)
    live = {m: k for m, k in outcome.items() if m in in_scope}
    killed = sum(1 for k in live.values() if k in ("caught", "timeout"))
    viable = sum(1 for k in live.values() if k != "unviable")
    survivors = sorted(m for m, k in live.items() if k == "missed")
    out = ["# Mutation testing report (generated by `ci/mutants report`)", "",
           "Scope: `.cargo/mutants.toml`, listed in mutants/scope.txt (`ci/mutants scope` adopts the list at "
           "HEAD; mutants whose lines moved keep their outcomes through mutants/moved.tsv). Test command: "
           "`cargo test --profile mutants --features test-hooks` (unit, integration and the BDD suite). "
           "Timeouts count as killed. A targeted rerun (mutants/reruns/) replaces a shard's outcome for the "
           "mutants it ran again, after a test was added.", "",
           "| run | commit | caught | missed | timeout | unviable | complete |", "|---|---|---|---|---|---|---|"]
    for tier, name, commit, partial, c in rows:
        done = "no (stopped early)" if partial else "yes"
        out.append(f"| {tier} {name} | {commit} | {c['caught']} | {c['missed']} | {c['timeout']} "
                   f"| {c['unviable']} | {done} |")
    score = f"{100.0 * killed / viable:.1f} %" if viable else "n/a"
    explained = sum(1 for m in survivors if m in equivalent)
    untested = [m for m in scope if m not in outcome]
    out += ["", f"Coverage: {len(live)} of {len(scope)} mutants in scope tested.", "",
            f"Mutation score: {killed} of {viable} viable mutants in scope killed ({score}); "
            f"{explained} of {len(survivors)} survivors explained as equivalent.", "", "## Survivors", ""]
    out += [f"- `{m}` ({where[m]}): {equivalent.get(m, '**NEEDS A TEST**')}" for m in survivors] or ["None."]
    out += ["", f"## Tested, then removed from the code: {len(retired)}", ""]
    out += [f"- `{m}` ({outcome[m]}, {where[m]})" + (f": {equivalent[m]}" if m in equivalent else "")
            for m in retired]
    out += ["", f"## Not yet tested: {len(untested)}", ""]
    if untested:
        out.append("Run them: `ci/mutants remaining -j 2 --copy-target=true` from a separate worktree "
                   "(see the header).")
    open("mutants/REPORT.md", "w").write("\n".join(out) + "\n")
    print("\n".join(out[:40]))


if __name__ == "__main__":
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb == "scope":
        adopt_scope(sys.argv[2])
    elif verb == "remaining":
        remaining()
    elif verb == "open":
        open_mutants()
    elif verb == "report":
        report()
    else:
        sys.exit(__doc__)
