"""``all_gather`` through shared memory for ranks on one machine.

    lg = LocalGather.connect()          # a collective; None when ranks are on several hosts
    parts = lg.all_gather(buf)          # list of world_size float32 tensors, parts[rank] is buf

Gloo moves tensors over TCP, even between processes on the same machine; on a small CPU
box a 1 MB all-gather costs milliseconds of socket copies and thread hand-offs, about as
much as a training step's gradient exchange can afford in total (docs/training-at-scale.md).
Here each rank writes its buffer into its own anonymous shared-memory file (``memfd``) and
the only message through gloo is a 16-byte header per rank (the byte count), which is also
the synchronisation: when the header all-gather returns, every rank has written, and each
rank reads the others' buffers straight from their files (``/proc/<pid>/fd/<fd>``, mapped
once). Each rank has two files used alternately, so a rank that runs ahead writes call
``c + 1`` while the others still read call ``c``; it cannot reach call ``c + 2`` (the same
file) before every rank has finished call ``c`` and entered ``c + 1``.

Nothing has a name in ``/dev/shm``: the memory goes back to the system when the last
process holding it exits, however it exits (``kill -9`` included). ``connect`` checks that
every rank has the same boot id and can open every other rank's files, and returns None
otherwise (several machines, a sandbox without ``/proc``), so the caller falls back to gloo.
``FEEDRANK_SHM_GATHER=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import socket

import torch
import torch.distributed as tdist


def _host_key() -> int:
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()  # noqa: SIM115 - tiny read
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
        if nbytes <= self.size:
            return
        if grow:  # the owner: at least 1.5x, so a slowly growing buffer remaps rarely
            size = max(nbytes, self.size + self.size // 2, 1 << 16)
            os.ftruncate(self.fd, size)
        else:
            size = os.fstat(self.fd).st_size
            if size < nbytes:
                raise RuntimeError(f"shared gradient buffer is {size} bytes, a peer announced {nbytes}")
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a caller still holds a view: the old mapping lives until it is dropped
                pass
        self.map = mmap.mmap(self.fd, size)
        self.size = size

    def tensor(self, numel: int) -> torch.Tensor:
        assert self.map is not None
        return torch.frombuffer(self.map, dtype=torch.float32, count=numel)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a tensor still views it; the mapping goes with the process
                pass
        os.close(self.fd)


class LocalGather:
    def __init__(self, rank: int, world: int, mine: list[_Segment], peers: dict[tuple[int, int], _Segment]) -> None:
        self.rank, self.world = rank, world
        self.mine = mine
        self.peers = peers
        self.calls = 0

    @classmethod
    def connect(cls) -> LocalGather | None:
        """Set up (a collective: every rank must call it); None if shared memory cannot be used."""
        rank, world = tdist.get_rank(), tdist.get_world_size()
        mine: list[_Segment] = []
        ok = os.environ.get("FEEDRANK_SHM_GATHER", "1") != "0" and hasattr(os, "memfd_create")
        if ok:
            try:
                mine = [_Segment(os.memfd_create(f"feedrank-grads-{rank}-{p}")) for p in (0, 1)]
            except OSError:
                ok = False
        me = torch.tensor([_host_key() if ok else -1, os.getpid(), *(s.fd for s in mine)] if ok else [-1, 0, 0, 0],
                          dtype=torch.int64)
        all_ids = [torch.empty_like(me) for _ in range(world)]
        tdist.all_gather(all_ids, me)
        ok = ok and all(int(t[0]) == int(me[0]) for t in all_ids)
        peers: dict[tuple[int, int], _Segment] = {}
        if ok:
            try:
                for r, t in enumerate(all_ids):
                    if r != rank:
                        for p in (0, 1):
                            peers[(r, p)] = _Segment(os.open(f"/proc/{int(t[1])}/fd/{int(t[2 + p])}", os.O_RDWR))
            except OSError:
                ok = False
        flags = [torch.empty(1, dtype=torch.int64) for _ in range(world)]
        tdist.all_gather(flags, torch.tensor([int(ok)], dtype=torch.int64))
        if all(int(f) for f in flags):
            return cls(rank, world, mine, peers)
        for s in (*mine, *peers.values()):
            s.close()
        return None

    def all_gather(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``buf`` (1-D float32, any length per rank), in rank order. The
        others' tensors view shared memory that is rewritten two calls later: read or copy
        them before then. ``parts[rank]`` is ``buf`` itself."""
        if buf.dtype != torch.float32 or buf.dim() != 1:
            raise ValueError(f"LocalGather.all_gather takes a 1-D float32 tensor, got {buf.dtype} {tuple(buf.shape)}")
        parity = self.calls % 2
        self.calls += 1
        own = self.mine[parity]
        own.ensure(4 * buf.numel(), grow=True)
        own.tensor(buf.numel()).copy_(buf)
        head = torch.tensor([buf.numel()], dtype=torch.int64)
        heads = [torch.empty_like(head) for _ in range(self.world)]
        tdist.all_gather(heads, head)  # the synchronisation: every rank has written
        parts = []
        for r in range(self.world):
            if r == self.rank:
                parts.append(buf)
                continue
            n = int(heads[r])
            seg = self.peers[(r, parity)]
            seg.ensure(4 * n, grow=False)
            parts.append(seg.tensor(n))
        return parts

    def close(self) -> None:
        for s in (*self.mine, *self.peers.values()):
            s.close()
        self.mine, self.peers = [], {}
