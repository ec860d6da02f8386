"""The seeds' own systems in the harness's suites: eventlet and gevent, same shapes as the
Rust cases (see runtimes.rs). Run by the harness as `python -c <this file> SUITE LIBRARY N`; prints
one figure, as the Rust children do. Each case checks what its tasks did and fails otherwise.
"""
import gc
import os
import sys
import time

suite, library, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

if library == "gevent":
    import gevent
    import gevent.lock

    spawn, sleep = gevent.spawn, gevent.sleep

    def join(tasks):
        gevent.joinall(tasks, raise_error=True)
        return [t.value for t in tasks]

    Semaphore = gevent.lock.Semaphore
    from gevent.event import Event

    def pool_call(f):
        return gevent.get_hub().threadpool.apply(f)

    def kill(tasks):
        gevent.killall(tasks)

elif library == "eventlet":
    import eventlet
    import eventlet.event
    import eventlet.semaphore
    from eventlet import tpool

    spawn, sleep = eventlet.spawn, eventlet.sleep

    def join(tasks):
        return [t.wait() for t in tasks]

    Semaphore = eventlet.semaphore.Semaphore
    pool_call = tpool.execute

    class Event:
        """eventlet's Event sends once; a gate is opened with `set`, as gevent's."""

        def __init__(self):
            self._event = eventlet.event.Event()

        def wait(self):
            return self._event.wait()

        def set(self):
            self._event.send(None)

    def kill(tasks):
        for t in tasks:
            t.kill()

else:
    sys.exit(f"unknown library {library}")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def quantile(samples, q):
    samples.sort()
    return samples[round((len(samples) - 1) * q)]


def spawn_join():
    """N tasks that return their index, spawned from the main task, then joined."""
    t0 = time.perf_counter_ns()
    tasks = [spawn(lambda i=i: i) for i in range(n)]
    values = join(tasks)
    dt = time.perf_counter_ns() - t0
    assert sum(values) == n * (n - 1) // 2, "lost results"
    return dt / n


def burst():
    """Bursts of 20,000 tasks that wait at a gate and return their index once the main task
    opens it, then are joined."""
    size = 20_000
    bursts = max(n // size, 1)
    t0 = time.perf_counter_ns()
    for _ in range(bursts):
        gate = Event()

        def task(i):
            gate.wait()
            return i

        tasks = [spawn(task, i) for i in range(size)]
        gate.set()
        values = join(tasks)
        assert sum(values) == size * (size - 1) // 2, "lost results"
    return (time.perf_counter_ns() - t0) / (bursts * size)


def ping_pong():
    """Two tasks hand a turn back and forth, each parking until its turn."""
    ping, pong = Semaphore(0), Semaphore(0)
    turns = [0]

    def other():
        for _ in range(n):
            ping.acquire()
            turns[0] += 1
            pong.release()

    task = spawn(other)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        ping.release()
        pong.acquire()
    dt = time.perf_counter_ns() - t0
    join([task])
    assert turns[0] == n, "lost turns"
    return dt / n


def idle_memory():
    """Resident bytes per task added by N tasks that all sleep."""
    join([spawn(lambda: None)])
    gc.collect()
    before = rss_bytes()
    asleep = [0]

    def idle():
        asleep[0] += 1
        sleep(3600)

    tasks = [spawn(idle) for _ in range(n)]
    while asleep[0] < n:
        sleep(0.01)
    after = rss_bytes()
    kill(tasks)
    return (after - before) / n


# The CPU per operation of a case's timed section, when it reports one (printed after the
# figure, as the Rust children do).
section_cpu = [None]


def round_trips(q, spacing):
    """Calls of a trivial function through the thread pool from one task, after 1,000
    warm-up calls: the q-quantile of the latencies (ns); `spacing` seconds of sleep before
    each call. The CPU of the timed calls is reported too; with a spacing, beyond that of the
    sleeps: each block of 100 calls is followed by as many sleeps alone, whose CPU is
    subtracted (as the Rust cases do)."""
    for _ in range(1000):
        pool_call(lambda: None)
    samples = []
    spent = 0
    while len(samples) < n:
        block = min(100, n - len(samples)) if spacing else n
        cpu = time.process_time_ns()
        for _ in range(block):
            if spacing:
                sleep(spacing)
            t0 = time.perf_counter_ns()
            assert pool_call(lambda: 1) == 1
            samples.append(time.perf_counter_ns() - t0)
        spent += time.process_time_ns() - cpu
        if spacing:
            cpu = time.process_time_ns()
            for _ in range(block):
                sleep(spacing)
            spent -= time.process_time_ns() - cpu
    section_cpu[0] = max(spent, 0) / n
    return quantile(samples, q)


def idle_process():
    """A server at rest: 100 tasks asleep and one in accept on loopback, then N seconds of
    nothing; the process's wake-ups (context switches of all its threads) per second, and
    its CPU per second reported."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    if library == "gevent":
        from gevent.socket import socket as green_socket
    else:
        from eventlet.green.socket import socket as green_socket
    green = green_socket(fileno=listener.detach())
    acceptor = spawn(green.accept)
    sleepers = [spawn(sleep, 3600) for _ in range(100)]
    sleep(2)

    def switches():
        total = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches:" in line:
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    # The readings of /proc are left out of the CPU.
    woken = switches()
    cpu = time.process_time_ns()
    sleep(n)
    section_cpu[0] = (time.process_time_ns() - cpu) / n
    woken = switches() - woken
    kill(sleepers + [acceptor])
    return woken / n


def green_listener():
    """The library's green socket module, and a listening socket on a free loopback port."""
    if library == "gevent":
        from gevent import socket as gsocket
    else:
        from eventlet.green import socket as gsocket

    listener = gsocket.socket()
    listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    return gsocket, listener


def echo_remote(conns):
    """An echo server (a task per connection) for the harness's client process, which opens
    `conns` connections and makes N round trips of 64 bytes in all: the client's wall time per
    round trip; the server's CPU per round trip reported."""
    gsocket, listener = green_listener()

    def handle(conn):
        while True:
            data = b""
            while len(data) < 64:
                chunk = conn.recv(64 - len(data))
                if not chunk:
                    return
                data += chunk
            conn.sendall(data)

    def accept():
        while True:
            conn, _ = listener.accept()
            spawn(handle, conn)

    spawn(accept)
    return time_client(listener.getsockname()[1], conns)


def time_client(port, conns):
    """Runs the harness's client process against 127.0.0.1:`port` (`conns` connections, N round
    trips of 64 bytes in all) while the hub serves it: the client's wall time per round trip;
    this process's CPU per round trip reported."""
    import subprocess

    per = max(n // conns, 1)
    cpu = time.process_time_ns()
    client = [os.environ["GREENHUB_BENCH_EXE"], "--child", "echo_client",
              "127.0.0.1:%d" % port, str(conns), str(per)]
    # Polled with green sleeps, so that the hub serves the client meanwhile (its output is a
    # line: the pipe never fills).
    proc = subprocess.Popen(client, stdout=subprocess.PIPE)
    while proc.poll() is None:
        sleep(0.01)
    assert proc.returncode == 0, "the echo client failed"
    out = proc.stdout.read()
    section_cpu[0] = (time.process_time_ns() - cpu) / (conns * per)
    return int(out.decode().strip()) / (conns * per)


def proxy(conns):
    """A proxy (a task per client connection, each with its own connection to an echo
    backend process) between the harness's client process and that backend: the client's
    wall time per round trip; the proxy's CPU per round trip reported."""
    import subprocess

    gsocket, listener = green_listener()
    exe = os.environ["GREENHUB_BENCH_EXE"]
    backend = subprocess.Popen([exe, "--child", "echo_backend"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    host, port = backend.stdout.readline().decode().strip().rsplit(":", 1)
    upstream_addr = (host, int(port))

    def recv64(sock):
        data = b""
        while len(data) < 64:
            chunk = sock.recv(64 - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def handle(conn):
        conn.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        upstream = gsocket.create_connection(upstream_addr)
        upstream.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        while True:
            data = recv64(conn)
            if data is None:
                return
            upstream.sendall(data)
            data = recv64(upstream)
            if data is None:
                return
            conn.sendall(data)

    def accept():
        while True:
            conn, _ = listener.accept()
            spawn(handle, conn)

    spawn(accept)
    try:
        return time_client(listener.getsockname()[1], conns)
    finally:
        backend.kill()
        backend.wait()


cases = {
    "spawn_join": spawn_join,
    "burst": burst,
    "ping_pong_1": ping_pong,
    "idle_memory": idle_memory,
    "idle_process": idle_process,
    "echo_remote_1": lambda: echo_remote(1),
    "echo_remote_100": lambda: echo_remote(100),
    "echo_remote_1000": lambda: echo_remote(1000),
    "proxy_1": lambda: proxy(1),
    "proxy_100": lambda: proxy(100),
    "proxy_1000": lambda: proxy(1000),
    "tpool_rtt_p50": lambda: round_trips(0.5, 0),
    "tpool_rtt_p99": lambda: round_trips(0.99, 0),
    "tpool_spaced": lambda: round_trips(0.5, 0.001),
    "tpool_busy_p99": lambda: round_trips(0.99, 0),
}
figure = cases[suite]()
print(figure if section_cpu[0] is None else f"{figure} {section_cpu[0]}")
# Leave without tearing down thousands of parked tasks, as the Rust children do.
sys.stdout.flush()
os._exit(0)
