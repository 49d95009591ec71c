"""``all_gather`` through shared memory for ranks on one machine.

    lg = LocalGather.connect()          # a collective; None when ranks are on several hosts
    parts = lg.all_gather(buf)          # list of world_size float32 tensors, parts[rank] is buf

Gloo moves tensors over TCP even between processes on one machine, and every collective
hands work between the caller's thread and gloo's I/O thread on each side: on a small,
busy CPU box one tiny all-gather costs milliseconds of scheduling latency, about as much as
a training step's gradient exchange can afford in total (docs/training-at-scale.md).

Here each rank writes its buffer into its own anonymous shared-memory file (``memfd``),
then stores the call's sequence number in the file's header; the others poll that number
(spinning for 2 ms, then yielding, then 0.1 ms naps, 1 ms naps after a second) and read
the buffer straight from the file (``/proc/<pid>/fd/<fd>``, mapped once). On x86 stores
become visible in program order, so a peer that sees the sequence number sees the data;
on other architectures every rank first passes a gloo barrier (a full synchronisation). Each rank has two files used alternately: a rank that runs ahead writes
call ``c + 1`` while the others still read call ``c``, and it cannot write call ``c + 2``
(the first file again) before every rank has published ``c + 1``, i.e. finished reading
``c``.

Nothing has a name in ``/dev/shm``: the memory goes back to the system when the last
process holding it exits, however it exits (``kill -9`` included). A rank waiting for a
peer checks every second that the peer process is alive and gives up after ``timeout_s``.
``connect`` checks that every rank has the same boot id and can open every other rank's
files (each holds a random nonce its owner announced), and returns None otherwise
(several machines, a sandbox without ``/proc``), so the caller falls back to gloo.
``FEEDRANK_SHM_GATHER=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import platform
import socket
import struct
import time

import torch
import torch.distributed as tdist

HEADER = 64  # bytes before the data: int64 sequence number, int64 length (floats), int64 nonce; 64 keeps data aligned
ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
SPIN_S = 0.002  # busy-poll this long, then yield, then nap
NAP_S = 0.0001


def _host_key() -> int:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return int.from_bytes(hashlib.sha256(f"{socket.gethostname()}|{boot}".encode()).digest()[:7], "big")


class _Segment:
    """One shared file and this process's mapping of it (remapped when it grows)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None

    def ensure(self, nbytes: int, grow: bool) -> None:
        nbytes += HEADER
        if nbytes <= self.size:
            return
        if grow:  # the owner: at least 1.5x, so a slowly growing buffer remaps rarely
            size = max(nbytes, self.size + self.size // 2, 1 << 16)
            os.ftruncate(self.fd, size)
        else:
            size = os.fstat(self.fd).st_size
            if size < nbytes:
                raise RuntimeError(f"shared gradient buffer is {size} bytes, a peer announced {nbytes}")
        old = self.map
        self.map = mmap.mmap(self.fd, size)
        if old is not None:
            try:
                old.close()
            except BufferError:  # a caller still holds a view: the old mapping lives until it is dropped
                pass
        self.size = size

    def header(self) -> tuple[int, int]:
        assert self.map is not None
        return struct.unpack_from("<qq", self.map, 0)

    def nonce(self, value: int | None = None) -> int:
        """The file's identity check: set it (owner) or read it (peer)."""
        assert self.map is not None
        if value is not None:
            struct.pack_into("<q", self.map, 16, value)
        return struct.unpack_from("<q", self.map, 16)[0]

    def publish(self, seq: int, numel: int) -> None:
        assert self.map is not None
        struct.pack_into("<q", self.map, 8, numel)
        struct.pack_into("<q", self.map, 0, seq)  # last: a peer that sees seq sees the data

    def tensor(self, numel: int) -> torch.Tensor:
        assert self.map is not None
        return torch.frombuffer(self.map, dtype=torch.float32, count=numel, offset=HEADER)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a tensor still views it; the mapping goes with the process
                pass
        os.close(self.fd)


class LocalGather:
    def __init__(self, rank: int, world: int, mine: list[_Segment], peers: dict[tuple[int, int], _Segment],
                 pids: list[int], timeout_s: float = 1800.0) -> None:
        self.rank, self.world = rank, world
        self.mine = mine
        self.peers = peers
        self.pids = pids
        self.timeout_s = timeout_s
        self.calls = 0

    @classmethod
    def connect(cls, timeout_s: float = 1800.0) -> LocalGather | None:
        """Set up (a collective: every rank must call it); None if shared memory cannot be used."""
        rank, world = tdist.get_rank(), tdist.get_world_size()
        mine: list[_Segment] = []
        ok = os.environ.get("FEEDRANK_SHM_GATHER", "1") != "0" and hasattr(os, "memfd_create")
        if ok:
            try:
                mine = [_Segment(os.memfd_create(f"feedrank-grads-{rank}-{p}")) for p in (0, 1)]
                for s in mine:
                    s.ensure(0, grow=True)  # sequence number 0: nothing published yet
                    s.nonce(int.from_bytes(os.urandom(7), "big"))
            except OSError:
                ok = False
        me = torch.tensor([_host_key(), os.getpid(), *(s.fd for s in mine), *(s.nonce() for s in mine)] if ok
                          else [-1, 0, 0, 0, 0, 0], dtype=torch.int64)
        all_ids = [torch.empty_like(me) for _ in range(world)]
        tdist.all_gather(all_ids, me)
        ok = ok and all(int(t[0]) == int(me[0]) for t in all_ids)
        peers: dict[tuple[int, int], _Segment] = {}
        if ok:
            try:
                for r, t in enumerate(all_ids):
                    if r != rank:
                        for p in (0, 1):
                            seg = peers[(r, p)] = _Segment(os.open(f"/proc/{int(t[1])}/fd/{int(t[2 + p])}", os.O_RDWR))
                            seg.ensure(0, grow=False)
                            if seg.nonce() != int(t[4 + p]):  # another process behind that pid (pid namespaces)
                                raise RuntimeError(f"rank {r}'s shared file did not match")
            except (OSError, RuntimeError):
                ok = False
        flags = [torch.empty(1, dtype=torch.int64) for _ in range(world)]
        tdist.all_gather(flags, torch.tensor([int(ok)], dtype=torch.int64))
        if all(int(f) for f in flags):
            return cls(rank, world, mine, peers, [int(t[1]) for t in all_ids], timeout_s)
        for s in (*mine, *peers.values()):
            s.close()
        return None

    def all_gather(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``buf`` (1-D float32, any length per rank), in rank order. The
        others' tensors view shared memory that is rewritten two calls later: read or copy
        them before then. ``parts[rank]`` is ``buf`` itself."""
        if buf.dtype != torch.float32 or buf.dim() != 1:
            raise ValueError(f"LocalGather.all_gather takes a 1-D float32 tensor, got {buf.dtype} {tuple(buf.shape)}")
        self.calls += 1
        seq, parity = self.calls, self.calls % 2
        own = self.mine[parity]
        own.ensure(4 * buf.numel(), grow=True)
        own.tensor(buf.numel()).copy_(buf)
        own.publish(seq, buf.numel())
        if not ORDERED_STORES:  # a full synchronisation before trusting what peers published
            tdist.barrier()
        parts = []
        for r in range(self.world):
            if r == self.rank:
                parts.append(buf)
                continue
            seg = self.peers[(r, parity)]
            numel = self._wait(r, seg, seq)
            seg.ensure(4 * numel, grow=False)
            parts.append(seg.tensor(numel))
        return parts

    def _wait(self, r: int, seg: _Segment, seq: int) -> int:
        """Poll rank ``r``'s header until it published call ``seq``; its length (floats)."""
        t0 = time.perf_counter()
        checked = t0
        while True:
            got, numel = seg.header()
            if got == seq:
                return numel
            if got > seq:
                raise RuntimeError(f"rank {r} published call {got} while this rank waits for {seq} (out of step)")
            now = time.perf_counter()
            if now - t0 < SPIN_S:
                continue
            if now - checked > 1.0:
                checked = now
                try:
                    os.kill(self.pids[r], 0)
                except ProcessLookupError:
                    raise RuntimeError(f"rank {r} (pid {self.pids[r]}) exited during a gradient exchange") from None
                if now - t0 > self.timeout_s:
                    raise TimeoutError(f"rank {r} did not reach gradient exchange {seq} in {self.timeout_s:.0f} s")
            if now - t0 < 10 * SPIN_S:
                os.sched_yield()
            else:  # a long wait (a peer writing a checkpoint, mining negatives) naps longer
                time.sleep(NAP_S if now - t0 < 1.0 else 10 * NAP_S)

    def close(self) -> None:
        for s in (*self.mine, *self.peers.values()):
            s.close()
        self.mine, self.peers = [], {}
