#!/usr/bin/env python3
"""ci/load-suite.py: the load and fault suite (issue 13 point 7), run by
ci/load-suite. Starts the release worker on a model (CPU by default), attacks
it the ways the issue lists, and prints one table: what was tried, how many,
what happened, what was lost (must be nothing). After every attack it checks
the worker's state: alive (unless the attack stops it), ready, its shard
sealed with the same digest. Exits non-zero when anything was lost.

Attacks: slowloris (half-open connections against a file limit of 1024),
concurrency 64 for 60 s, 16 concurrent Plans during a job, model file
truncated during Plan, SIGTERM mid-stream, a second SIGTERM mid-stream,
SIGKILL and restart. Stdlib only; the worker's own `loadgen` drives the
concurrency level.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target/release/worker-orcd"))
MODEL_ROOT = os.environ.get("MODEL_ROOT", os.path.join(ROOT, "models"))
MODEL = os.environ.get("MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf")
BACKEND = os.environ.get("BACKEND", "cpu")
PORT = int(os.environ.get("PORT", "8415"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench-results/load-suite"))
HALF_OPEN = int(os.environ.get("HALF_OPEN", "2000"))
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "60"))
PROMPT = "Once upon a time, in a village at the edge of a great forest, there lived"


class Worker:
    """One worker process with its own folder, token and config."""

    def __init__(self, work, nofile=None):
        self.work = work
        self.token = os.urandom(24).hex()
        self.proc = None
        self.nofile = nofile
        self.starts = 0
        tok = os.path.join(work, "token")
        with open(tok, "w") as f:
            f.write(self.token)
        os.chmod(tok, 0o600)
        self.config = os.path.join(work, "config.json")
        with open(self.config, "w") as f:
            json.dump({
                "worker_id": "load-suite", "pool_id": "local", "model_root": os.path.join(work, "models"),
                "model_path": MODEL, "rpc_port": PORT, "readiness_callback_url": "http://127.0.0.1:9/ready",
                "gpu_device": 0, "backend": BACKEND, "api_token_file": tok, "state_dir": os.path.join(work, "state"),
                "slots_total": 8, "max_queued_jobs": 64, "drain_timeout_ms": 20000, "max_connections": 900,
            }, f)

    def start(self):
        self.starts += 1
        args = [BIN, "--config", self.config] + (["--allow-root"] if os.geteuid() == 0 else [])
        log = open(os.path.join(self.work, f"worker-{self.starts}.log"), "w")
        pre = None
        if self.nofile:
            import resource
            n = self.nofile
            pre = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, preexec_fn=pre)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode} while starting")
            try:
                if request("GET", "/health", None, None, timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the worker did not become ready within 120 s")

    def state(self):
        """(alive, ready, sealed, digest) as the worker reports them now."""
        alive = self.proc is not None and self.proc.poll() is None
        try:
            status, body = request("GET", "/worker/ready", None, self.token, timeout=10)
            j = json.loads(body)
            h = (j.get("handles") or [{}])[0]
            return alive, status == 200 and j.get("ready") is True, h.get("sealed") is True, h.get("digest")
        except (OSError, ValueError):
            return alive, False, False, None


def request(method, path, body, token, timeout=30, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    h = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        h["Authorization"] = "Bearer " + token
    h.update(headers or {})
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read().decode(errors="replace")
    c.close()
    return r.status, data


def stream_job(w, max_tokens, events, seed=1):
    """Run one Execute, appending (event name, data) to `events` as they come."""
    handle = json.loads(request("GET", "/worker/ready", None, w.token)[1])["handles"][0]["shard_id"]
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    body = {"handle_id": handle, "prompt": PROMPT, "params": {"max_tokens": max_tokens, "seed": seed}}
    c.request("POST", "/worker/execute", body=json.dumps(body),
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + w.token})
    r = c.getresponse()
    if r.status != 200:
        events.append(("http", str(r.status)))
        return
    name = None
    try:
        for raw in r:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name:
                events.append((name, line[5:].strip()))
                if name in ("end", "error"):
                    break
    except OSError as e:
        events.append(("broken", str(e)))


ROWS = []


def row(what, tried, happened, lost):
    ROWS.append((what, tried, happened, lost))
    print(f"  {what}: {tried}; {happened}; lost: {lost}", flush=True)


def check_state(w, before_digest, expect_alive=True):
    alive, ready, sealed, digest = w.state()
    problems = []
    if expect_alive and not alive:
        problems.append("worker dead")
    if expect_alive and not (ready and sealed):
        problems.append("not ready and sealed")
    if expect_alive and digest != before_digest:
        problems.append("digest changed")
    return problems


def rss_mib(w):
    try:
        for line in open(f"/proc/{w.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


# Connections one holder process keeps: below any sane per-process file
# limit, so 20,000 half-open connections are spread over several processes
# instead of needing one process allowed 20,000 files.
PER_HOLDER = 8000


def hold_half_open(n, counts, release):
    """Child process: open up to n connections that each send half a request
    header, report how many were opened, hold them until `release` is set."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        except OSError:
            break
    counts.put(len(socks))
    release.wait()
    for s in socks:
        s.close()


def slowloris(w, digest):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    rss_before = rss_mib(w)
    counts, release = ctx.Queue(), ctx.Event()
    shares = [min(PER_HOLDER, HALF_OPEN - i) for i in range(0, HALF_OPEN, PER_HOLDER)]
    holders = [ctx.Process(target=hold_half_open, args=(n, counts, release)) for n in shares]
    for h in holders:
        h.start()
    held = sum(counts.get(timeout=600) for _ in holders)
    t0 = time.time()
    ok_health = ok_auth = None
    while time.time() - t0 < 40 and (ok_health is None or ok_auth is None):
        try:
            if ok_health is None and request("GET", "/health", None, None, timeout=5)[0] == 200:
                ok_health = time.time() - t0
            if ok_auth is None and request("GET", "/worker/ready", None, w.token, timeout=5)[0] == 200:
                ok_auth = time.time() - t0
        except OSError:
            time.sleep(0.2)
    release.set()
    for h in holders:
        h.join(timeout=120)
    # Memory returns near its baseline once the connections are gone.
    rss_after = rss_mib(w)
    for _ in range(40):
        rss_after = rss_mib(w)
        if rss_after <= rss_before + 32:
            break
        time.sleep(0.5)
    lost = check_state(w, digest)
    if ok_health is None or ok_auth is None:
        lost.append("unreachable for 40 s")
    if rss_after > rss_before + 32:
        lost.append(f"memory {rss_before} -> {rss_after} MiB")
    row("slowloris (worker file limit 1024)", f"{held} half-open connections held",
        f"/health in {ok_health if ok_health is None else round(ok_health, 2)} s, authenticated /worker/ready in "
        f"{ok_auth if ok_auth is None else round(ok_auth, 2)} s; RSS {rss_before} -> {rss_after} MiB after",
        ", ".join(lost) or "nothing")


def concurrency(w, digest):
    out = os.path.join(OUT, "concurrency-64")
    tokfile = os.path.join(w.work, "token")
    t0 = time.time()
    sent = ok = refused = failed = 0
    while time.time() - t0 < LOAD_SECONDS:
        r = subprocess.run([BIN, "loadgen", "--url", f"http://127.0.0.1:{PORT}", "--token-file", tokfile,
                            "--concurrency", "64", "--requests-per-level", "128", "--max-tokens", "16",
                            "--prompt-words", "16", "--out-dir", out], capture_output=True, text=True)
        try:
            level = json.load(open(os.path.join(out, "loadgen.json")))["levels"][0]
        except (OSError, ValueError, KeyError, IndexError):
            failed += 1
            break
        sent += level["requests"]; ok += level["completed"]; refused += level["refused"]; failed += level["failed"]
        if r.returncode != 0:
            break
    lost = check_state(w, digest)
    if failed:
        lost.append(f"{failed} requests failed")
    row(f"concurrency 64 (at least {LOAD_SECONDS} s, whole rounds of 128)",
        f"{sent} Execute requests in {time.time() - t0:.0f} s",
        f"{ok} streamed to their end, {refused} refused with a retriable 429", ", ".join(lost) or "nothing")


def plans_during_job(w, digest):
    events = []
    t = threading.Thread(target=stream_job, args=(w, 128, events))
    t.start()
    time.sleep(0.3)
    answers = []

    def plan():
        try:
            answers.append(request("POST", "/worker/plan", {"model_ref": MODEL, "shard_layout": "single"}, w.token)[0])
        except OSError as e:
            answers.append(str(e))
    ps = [threading.Thread(target=plan) for _ in range(16)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    t.join()
    lost = check_state(w, digest)
    if not events or events[-1][0] != "end":
        lost.append(f"the job ended with {events[-1] if events else 'nothing'}")
    bad = [a for a in answers if a != 200]
    row("16 concurrent Plans during a job", "16 Plans of the served model while a 128-token job streams",
        f"{answers.count(200)} answered 200{', others: ' + str(bad) if bad else ''}; the job ended with "
        f"{events[-1][0] if events else 'nothing'}", ", ".join(lost) or "nothing")


def truncation_during_plan(w, digest, trials=5):
    src = os.path.join(w.work, "models", MODEL)
    outcomes = {}
    for i in range(trials):
        victim = os.path.join(w.work, "models", f"victim-{i}.gguf")
        shutil.copyfile(src, victim)
        answer = []
        t = threading.Thread(target=lambda: answer.append(
            request("POST", "/worker/plan", {"model_ref": os.path.basename(victim), "shard_layout": "single"}, w.token)))
        t.start()
        time.sleep(0.005 * (i + 1))
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
        t.join()
        status, body = answer[0] if answer else (0, "{}")
        try:
            code = json.loads(body).get("code", "feasible" if status == 200 else "?")
        except ValueError:
            code = "?"
        key = f"{status} {code}"
        outcomes[key] = outcomes.get(key, 0) + 1
        os.remove(victim)
    lost = check_state(w, digest)
    row("model file truncated during Plan", f"{trials} Plans, each file cut to half while read",
        ", ".join(f"{n} x {k}" for k, n in sorted(outcomes.items())), ", ".join(lost) or "nothing")


def sigterm(w, digest, twice):
    events = []
    t = threading.Thread(target=stream_job, args=(w, 200, events))
    t.start()
    while not any(e[0] == "token" for e in events) and t.is_alive():
        time.sleep(0.02)
    w.proc.send_signal(signal.SIGTERM)
    if twice:
        time.sleep(0.2)
        w.proc.send_signal(signal.SIGTERM)
    t.join()
    code = w.proc.wait(timeout=60)
    last = events[-1] if events else ("nothing", "")
    lost = []
    want_code = 6 if twice else 0
    if code != want_code:
        lost.append(f"exit code {code}, expected {want_code}")
    if twice:
        ok = last[0] == "error" and "shutting down" in last[1]
        happened = f"the stream ended with {last[0]} {json.loads(last[1]).get('code') if last[0] == 'error' else ''}, exit {code}"
    else:
        ok = last[0] == "end"
        happened = f"the stream drained to {last[0]}, exit {code}"
    if not ok:
        lost.append(f"the stream ended with {last}")
    w.start()
    lost += check_state(w, digest)
    row("second SIGTERM mid-stream" if twice else "SIGTERM mid-stream", "1 streaming job, then the signal" +
        (" twice" if twice else ""), happened + "; restarted", ", ".join(lost) or "nothing")


def sigkill(w, digest):
    events = []
    t = threading.Thread(target=stream_job, args=(w, 200, events))
    t.start()
    while not any(e[0] == "token" for e in events) and t.is_alive():
        time.sleep(0.02)
    w.proc.kill()
    code = w.proc.wait(timeout=30)
    t.join()
    t0 = time.time()
    w.start()
    lost = check_state(w, digest)
    row("SIGKILL and restart", "1 streaming job, then SIGKILL",
        f"exit {code}; the client saw the stream break; ready again {time.time() - t0:.1f} s after the restart",
        ", ".join(lost) or "nothing")


def main():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="load-suite-")
    os.makedirs(os.path.join(work, "models"))
    shutil.copyfile(os.path.join(MODEL_ROOT, MODEL), os.path.join(work, "models", MODEL))
    w = Worker(work, nofile=1024)
    print(f"load suite: {BIN} on {MODEL} ({BACKEND}), logs in {work}", flush=True)
    try:
        w.start()
        digest = w.state()[3]
        slowloris(w, digest)
        concurrency(w, digest)
        plans_during_job(w, digest)
        truncation_during_plan(w, digest)
        sigterm(w, digest, twice=False)
        sigterm(w, digest, twice=True)
        sigkill(w, digest)
    finally:
        if w.proc and w.proc.poll() is None:
            w.proc.terminate()
            w.proc.wait(timeout=60)
    widths = [max(len(str(r[i])) for r in ROWS + [("what was tried", "how many", "what happened", "lost")]) for i in range(4)]
    lines = ["| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) + " |"
             for r in [("what was tried", "how many", "what happened", "lost")] + ROWS]
    lines.insert(1, "|" + "|".join("-" * (n + 2) for n in widths) + "|")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(OUT, "load-suite.md"), "w") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {MODEL} on {BACKEND}\n\n{table}\n")
    lost = [r for r in ROWS if r[3] != "nothing"]
    shutil.rmtree(work, ignore_errors=True) if not lost else None
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
