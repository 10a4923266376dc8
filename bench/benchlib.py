"""Helpers shared by the benchmarks (bench/run, bench/resolved): processes in network
namespaces, tool installation, the release build, oha results and medians."""

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY_UID = "2102"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def in_ns(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def as_proxy_uid(*args):
    return ["setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups", *args]


def ensure_tools():
    apt = [p for tool, p in [("ip", "iproute2"), ("iptables", "iptables"), ("nginx", "nginx-light"),
                             ("haproxy", "haproxy"), ("setpriv", "util-linux")] if not shutil.which(tool)
           and not Path(f"/usr/sbin/{tool}").exists()]
    if apt:
        log(f"installing {' '.join(apt)}")
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", *apt, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("oha"):
        log("installing oha (cargo install oha --locked; a few minutes, once)")
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)


def build():
    log("building weft-proxy, weft and weft-testkit (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-proxy", "-p", "weft-testkit", "-p", "weft"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    release = target / "release"
    return release / "weft-proxy", release / "weft-testkit", release / "weft"


class Process:
    def __init__(self, argv, log_path, env=None):
        self.argv = argv
        self.log_path = log_path
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                                     env=env, start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self):
        return self.proc.poll() is None

    def cpu_seconds(self):
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.startswith(("VmRSS", "VmHWM"))}
        return values.get("VmRSS", 0), values.get("VmHWM", 0)


def wait_port(ns, port, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = sh(*in_ns(ns, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"), check=False)
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in {ns} within {timeout}s")


def wait_ready(ns, proc, timeout=20.0):
    """Waits until a proxy answers /ready (with identity on: it holds a certificate)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sh(*in_ns(ns, "curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:4191/ready"), check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"proxy in {ns} not ready within {timeout}s: {Path(proc.log_path).read_text()[-2000:]}")


def summarize(result, target, scenario, rate, cpu, idle, after):
    """One measurement from oha's JSON, the proxies' CPU seconds during it, and their
    [(VmRSS, VmHWM)] before and after."""
    s, pct = result["summary"], result["latencyPercentiles"]
    codes = result.get("statusCodeDistribution", {})
    requests = sum(codes.values())
    # Requests still in flight when the duration ends are aborted by oha; they are not failures.
    errors = {k: v for k, v in result.get("errorDistribution", {}).items() if "deadline" not in k}
    failed = requests - codes.get("200", 0) + sum(errors.values())
    us = lambda v: round((v or 0) * 1e6)
    return {
        "scenario": scenario, "target": target, "rate": rate,
        "rps": round(s["requestsPerSec"], 1), "requests": requests, "failed": failed,
        "p50_us": us(pct.get("p50")), "p99_us": us(pct.get("p99")), "p999_us": us(pct.get("p99.9")),
        "max_us": us(s.get("slowest")),
        "cpu_s_per_10k": round(cpu / requests * 10_000, 3) if requests and target != "direct" else 0.0,
        "rss_kib": sum(r for r, _ in after), "rss_idle_kib": sum(r for r, _ in idle),
        "hwm_kib": sum(h for _, h in after),
        "rss_per_proxy_kib": {"idle": [r for r, _ in idle], "after": [r for r, _ in after],
                              "hwm": [h for _, h in after]},
        "errors": errors,
        "percentiles_us": {k: us(v) for k, v in pct.items()},
    }


def median_row(rows):
    """Medians over repetitions, with min and max as the spread."""
    first = rows[0]
    out = {k: first[k] for k in ("scenario", "target", "rate")}
    for key in ("rps", "p50_us", "p99_us", "p999_us", "max_us", "cpu_s_per_10k", "rss_kib", "rss_idle_kib", "hwm_kib"):
        values = [r[key] for r in rows]
        out[key] = statistics.median(values)
        out[f"{key}_spread"] = [min(values), max(values)]
    out["failed"] = sum(r["failed"] for r in rows)
    out["repetitions"] = len(rows)
    return out


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


