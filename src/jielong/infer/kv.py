"""The serving engine's KV cache, paged: fixed-size blocks from one shared pool, a block table
per request, and a prefix cache over full blocks. These are vLLM's ideas (PagedAttention,
Kwon et al. 2023, and its automatic prefix caching), in our own short code.

    pool = BlockPool(model, blocks=1024, block_size=16)   # or blocks_for_memory(model, 2.0)
    view = PagedView(pool)
    positions, mask = view.set(tables, starts, counts)    # before each forward
    model(ids, positions, view, mask)
    positions, mask = view.set_packed(tables, starts, counts)  # the same, one unpadded row

Memory follows the tokens a request actually holds: one of 300 tokens holds ceil(300/16) = 19
blocks, not a row as long as the context, so the same memory runs more requests at once.
Every layer's keys and values live in one tensor (layers, blocks × block_size, kv heads, head
dim); block b is the slots b·16 … b·16+15 of it, and a request's block table lists its blocks
in position order.

Prefix caching: once a block is full, it is named by a hash of (its parent block's hash, its
16 token ids, the LoRA adapter), so the same tokens at the same positions under the same weights
name the same block wherever they come from — a shared system prompt, the earlier turns of a
conversation, the same retrieved passages. A new request takes the blocks its prompt's prefix
names instead of computing them (`match`); blocks are reference-counted, and a block no request
holds stays cached, the least recently released evicted first, until the pool needs it. A
request releases its blocks tail first, so the evictions take the ends of prompts before the
shared beginnings (as vLLM does). The hash is BLAKE2b, not Python's `hash`: vLLM moved to a
cryptographic hash after a crafted collision could hand one user's cached keys to another
(CVE-2025-25183).

Attention reads a request's blocks gathered into one contiguous view per layer and forward
(`PagedView.update`): key i of a row holds position i, as in a row of the old slot cache, so
the model's masks and sliding windows work unchanged. The gather copies the keys a step reads;
a GPU kernel would read the blocks in place (bench/RESULTS.md measures what it costs here).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

import torch

from jielong.errors import UserError
from jielong.model import Transformer


def pool_dtype(model: Transformer) -> torch.dtype:
    """The paged KV pool's dtype: the model's, except float32 for a half-precision model on a
    CPU, where the model's attention then runs in float32 — torch's bf16 attention kernel
    took 2.2 ms for 32 one-token queries over 96 keys where float32 took 0.34 ms (2 threads),
    and converting the gathered keys instead cost more than it saved (bench/RESULTS.md)."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return p.dtype


def bytes_per_token(model: Transformer) -> int:
    """KV cache bytes one token holds: keys and values, every layer, in `pool_dtype`."""
    cfg = model.config
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * pool_dtype(model).itemsize


def blocks_for_memory(model: Transformer, gb: float, block_size: int = 16) -> int:
    """How many blocks of `block_size` tokens fit in `gb` gigabytes (10^9 bytes)."""
    n = int(gb * 1e9) // (bytes_per_token(model) * block_size)
    if n < 1:
        raise UserError(f"--kv_memory_gb {gb}: too small for one block of {block_size} tokens "
                        f"({bytes_per_token(model) * block_size} bytes); give more")
    return n


def block_hash(parent: bytes, tokens: list[int], adapter: str | None) -> bytes:
    """The name of a full block: what came before it, its tokens, and the weights."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", tokens).tobytes())
    h.update(b"\0" + (adapter or "").encode())
    return h.digest()


class BlockPool:
    """The blocks, who holds them (`refs`), and the prefix cache (`by_hash`)."""

    def __init__(self, model: Transformer, blocks: int, block_size: int = 16):
        if blocks < 1 or block_size < 1:
            raise UserError(f"the KV pool needs at least 1 block of at least 1 token, not "
                            f"{blocks} blocks of {block_size}")
        cfg, p = model.config, next(model.parameters())
        shape = (cfg.num_hidden_layers, blocks * block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=p.device, dtype=pool_dtype(model))
        self.v = torch.zeros(shape, device=p.device, dtype=pool_dtype(model))
        self.total, self.size = blocks, block_size
        self.refs = [0] * blocks
        self.free: deque[int] = deque(range(blocks))  # held by no one, holding nothing known
        self.cached: OrderedDict[int, None] = OrderedDict()  # held by no one, a known prefix
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def available(self) -> int:
        """Blocks a request may take: the free ones and the cached ones no request holds."""
        return len(self.free) + len(self.cached)

    def used(self) -> int:
        return self.total - self.available()

    def take(self) -> int:
        """A block for new keys (the caller checked `available`); evicts the oldest cached."""
        if self.free:
            b = self.free.popleft()
        else:
            b, _ = self.cached.popitem(last=False)
            del self.by_hash[self.hash_of.pop(b)]
        self.refs[b] = 1
        return b

    def release(self, blocks: list[int]) -> None:
        for b in reversed(blocks):  # tail first: evicted before the prefix they extend
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if b in self.hash_of:
                    self.cached[b] = None
                else:
                    self.free.append(b)

    def register(self, block: int, h: bytes) -> None:
        """`block` is full and holds the keys of the prefix named `h` (a second copy of a
        prefix already known stays unnamed, and is freed with its request)."""
        if h not in self.by_hash and block not in self.hash_of:
            self.by_hash[h], self.hash_of[block] = block, h

    def match(self, tokens: list[int], adapter: str | None) -> tuple[list[int], list[bytes]]:
        """The cached blocks that begin `tokens`, now held, and their hashes. At least one
        token is left to compute, whose logits the next token is sampled from."""
        blocks: list[int] = []
        hashes: list[bytes] = []
        for i in range((len(tokens) - 1) // self.size):
            h = block_hash(hashes[-1] if hashes else b"", tokens[i * self.size:(i + 1) * self.size], adapter)
            b = self.by_hash.get(h)
            if b is None:
                break
            if self.refs[b] == 0:
                del self.cached[b]
            self.refs[b] += 1
            blocks.append(b)
            hashes.append(h)
        return blocks, hashes


def gather(pool: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """Rows `read` (B, keys) of a layer's pool (slots, kv heads, head dim) as (B, kv heads,
    keys, head dim). `index_select` on the flattened indices, not `pool[read]`: advanced
    indexing took 710 µs where this takes 146 µs for 32 rows × 96 keys of the 124m preset
    (2 CPU threads), and the engine does it twice a layer every step (bench/RESULTS.md)."""
    B, keys = read.shape
    return pool.index_select(0, read.reshape(-1)).view(B, keys, *pool.shape[1:]).transpose(1, 2)


class PagedView:
    """What the model sees as its cache for one forward over some requests' blocks: `set` says
    which blocks each row reads and where its new keys go; `update` (called by each attention
    layer) writes them and returns the row's keys and values gathered in position order."""

    keys_at_positions = True  # key i of a row holds position i: the model windows by position

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.pos = 0  # the model reads this for positions it is not given; the engine gives them
        self.read = self.write = self.valid = None

    def set(self, tables: list[list[int]], starts: list[int],
            counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Row b feeds counts[b] tokens at positions starts[b]…, reading its keys 0… from the
        blocks tables[b]. Returns the rows' positions (B, T) and attention mask (B, 1, T, keys);
        rows are right-padded to the longest, a padding query repeating its row's last one."""
        dev, size = self.pool.k.device, self.pool.size
        start = torch.tensor(starts, device=dev)[:, None]
        count = torch.tensor(counts, device=dev)[:, None]
        T, end = max(counts), max(s + c for s, c in zip(starts, counts, strict=True))
        table = torch.zeros((len(tables), max(map(len, tables))), dtype=torch.long)
        for i, t in enumerate(tables):
            table[i, :len(t)] = torch.tensor(t)
        keys = torch.arange(end, device=dev)
        # beyond a row's blocks the gather reads block 0: keys its mask hides
        self.read = table.to(dev)[:, (keys // size).clamp(max=table.shape[1] - 1)] * size + keys % size
        t = torch.arange(T, device=dev)[None, :]
        positions = start + torch.minimum(t, count - 1)
        self.valid = t < count
        self.write = self.read.gather(1, positions)[self.valid]
        if min(counts) == T:  # no padding query (every decode step): nothing to pick out
            self.valid = None
        self.pos = 0
        return positions, (keys <= positions[..., None])[:, None]

    def set_packed(self, tables: list[list[int]], starts: list[int],
                   counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The same feed as `set`, packed into one row with no padding: the rows' new tokens one
        after another, and their keys likewise (row b's keys 0…starts[b]+counts[b]-1, then the
        next row's). Returns positions (1, T) and the mask (1, 1, T, keys), each query seeing
        its own row's keys up to its position. Key i is not position i here, so this is for
        models without sliding windows (the model windows by key index)."""
        dev, size = self.pool.k.device, self.pool.size
        reads, writes, positions, key_rows, key_positions = [], [], [], [], []
        for b, (t, s, c) in enumerate(zip(tables, starts, counts, strict=True)):
            keys = torch.arange(s + c)
            reads.append(torch.tensor(t)[keys // size] * size + keys % size)
            writes.append(reads[-1][s:])
            positions.append(keys[s:])
            key_rows.append(torch.full((s + c,), b))
            key_positions.append(keys)
        pos, kpos = torch.cat(positions), torch.cat(key_positions)
        query_rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        mask = (query_rows[:, None] == torch.cat(key_rows)[None]) & (kpos[None] <= pos[:, None])
        self.read = torch.cat(reads).to(dev)[None]
        self.write = torch.cat(writes).to(dev)
        self.valid = None  # every query is a real one
        self.pos = 0
        return pos.to(dev)[None], mask.to(dev)[None, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V = self.pool.k[layer], self.pool.v[layer]  # (slots, kv heads, head dim)
        k, v = self.queries(k).to(K.dtype), self.queries(v).to(V.dtype)
        K.index_copy_(0, self.write, k)
        V.index_copy_(0, self.write, v)
        return gather(K, self.read), gather(V, self.read)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """The real (not padding) queries' rows of x (B, kv heads, T, head dim), in `write`'s
        order. With no padding, a reshape: a boolean index costs a `nonzero` and a copy a
        layer, and a 32-row decode step's writes took 4.6 ms that way, 1.4 ms this way (124m
        preset, fp32, 2 threads; bench/RESULTS.md)."""
        x = x.transpose(1, 2)
        return x.reshape(-1, *x.shape[2:]) if self.valid is None else x[self.valid]
