//! The paged KV pool's bookkeeping (issue 11 point 3; WORKER-4422, 4722):
//! fixed-size pages of `page_tokens` positions and a page table per
//! sequence. The engines do not use it yet; this is the allocator they will
//! share, written and tested first, on the host, without a GPU.
//!
//! Why reserve everything at admission: a sequence gets every page it can
//! ever need (prompt + max_tokens) before its first step, so it never waits
//! for memory mid-stream and its output never depends on its neighbours.
//! Pages go back in one call at end, cancel, disconnect or timeout.
//!
//! A request that could never fit, even in an empty pool, is refused with
//! INVALID_PARAMS naming the pool's size; one that does not fit now gets
//! WORKER_BUSY (429) with a retry hint. Which pages a sequence gets is
//! decided by the pool's state alone (lowest free page first), and the
//! arithmetic never depends on where a row lives.

use crate::error::{Result, WorkerError};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How long a client should wait before retrying when the pool is full.
pub const FULL_RETRY_AFTER_MS: u64 = 250;

/// Positions a pool holds when asked for at least `tokens`: whole pages.
pub fn pool_tokens(tokens: usize, page_tokens: usize) -> usize {
    tokens.div_ceil(page_tokens.max(1)) * page_tokens.max(1)
}

/// The pages one sequence holds, in position order.
#[derive(Debug, PartialEq, Eq)]
pub struct PageTable {
    pages: Vec<u32>,
    page_tokens: usize,
}

impl PageTable {
    /// Positions this table can hold.
    pub fn capacity(&self) -> usize {
        self.pages.len() * self.page_tokens
    }

    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    /// The pool row of position `pos`: its page's first row plus the offset
    /// inside the page. None past the table's capacity.
    pub fn row(&self, pos: usize) -> Option<usize> {
        let page = *self.pages.get(pos / self.page_tokens)?;
        Some(page as usize * self.page_tokens + pos % self.page_tokens)
    }
}

/// Fixed-size pages and who may take them; see the module header.
#[derive(Debug)]
pub struct KvPool {
    page_tokens: usize,
    /// Free pages; `pop` hands out the lowest id.
    free: BinaryHeap<Reverse<u32>>,
    total: usize,
}

impl KvPool {
    /// A pool of `total_pages` pages of `page_tokens` positions each.
    pub fn new(page_tokens: usize, total_pages: usize) -> Result<Self> {
        if page_tokens == 0 || total_pages == 0 || total_pages > u32::MAX as usize {
            return Err(WorkerError::invalid(format!(
                "a KV pool needs at least one page of at least one position (got {total_pages} pages of \
                 {page_tokens} positions)"
            )));
        }
        Ok(Self {
            page_tokens,
            free: (0..total_pages as u32).map(Reverse).collect(),
            total: total_pages,
        })
    }

    /// The pool that `budget_bytes` can hold when one position of every
    /// layer's keys and values takes `bytes_per_token` bytes.
    pub fn for_budget(budget_bytes: u64, bytes_per_token: u64, page_tokens: usize) -> Result<Self> {
        let page_bytes = bytes_per_token
            .checked_mul(page_tokens as u64)
            .filter(|&b| b > 0)
            .ok_or_else(|| WorkerError::invalid("a KV page must take at least one byte"))?;
        let pages = usize::try_from(budget_bytes / page_bytes).unwrap_or(usize::MAX);
        Self::new(page_tokens, pages.min(u32::MAX as usize))
    }

    pub fn page_tokens(&self) -> usize {
        self.page_tokens
    }

    pub fn total_pages(&self) -> usize {
        self.total
    }

    pub fn used_pages(&self) -> usize {
        self.total - self.free.len()
    }

    /// Used pages over total pages, for /metrics.
    pub fn usage_ratio(&self) -> f64 {
        self.used_pages() as f64 / self.total as f64
    }

    /// Pages needed for `tokens` positions.
    pub fn pages_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.page_tokens)
    }

    /// Reserve every page `tokens` positions need (prompt + max_tokens), or
    /// refuse: INVALID_PARAMS when even an empty pool could not hold them,
    /// WORKER_BUSY while other sequences hold too much of it.
    pub fn reserve(&mut self, tokens: usize) -> Result<PageTable> {
        let need = self.pages_for(tokens.max(1));
        if need > self.total {
            return Err(WorkerError::invalid(format!(
                "the request needs {tokens} positions of KV cache ({need} pages of {}), more than this \
                 worker's whole pool of {} pages ({} positions); send a shorter prompt or fewer max_tokens",
                self.page_tokens,
                self.total,
                self.total * self.page_tokens
            )));
        }
        if need > self.free.len() {
            return Err(WorkerError::Busy {
                message: format!(
                    "the KV pool has {} free pages and the request needs {need}; retry when running \
                     sequences finish",
                    self.free.len()
                ),
                retry_after_ms: FULL_RETRY_AFTER_MS,
            });
        }
        let pages = (0..need)
            .filter_map(|_| self.free.pop().map(|p| p.0))
            .collect();
        Ok(PageTable {
            pages,
            page_tokens: self.page_tokens,
        })
    }

    /// Give a sequence's pages back (end, cancel, disconnect or timeout).
    pub fn release(&mut self, table: PageTable) {
        self.free.extend(table.pages.into_iter().map(Reverse));
    }
}

#[cfg(test)]
#[path = "kv_tests.rs"]
mod tests;
