// emu_runtime.cpp: the scheduler, the kernel registry and the C entry points
// of the host-compiled kernels (see emu.hpp for why and how).
#include "emu.hpp"

#include <sys/mman.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "emu_registry.hpp"

// The static __shared__ section's bounds (emu.hpp), when any kernel has one.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

namespace emu {
namespace {

enum class State { Run, AtBlock, AtWarp, Done };

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t GUARD_BYTES = 4096;    // below each stack, no access
constexpr size_t CANARY_BYTES = 4096;   // after the dynamic shared buffer

// A thread starts on its own stack through makecontext/swapcontext once;
// after that every switch is _setjmp/_longjmp, which, unlike swapcontext,
// makes no system call (a launch switches millions of times).
// Copies a thread has started and not yet waited for.
struct AsyncCopies {
    std::vector<std::pair<unsigned*, unsigned>> open;  // (dst, value read at issue)
    std::vector<std::vector<std::pair<unsigned*, unsigned>>> groups;  // committed, oldest first
};

struct Thread {
    AsyncCopies copies;
    ucontext_t ctx{};
    jmp_buf jb;
    bool started = false;
    char* stack = nullptr;
    State state = State::Done;
    unsigned warp_mask = 0;
};

struct Block {
    std::vector<Thread> threads;
    std::vector<unsigned long long> slots;  // 32 per warp
    std::vector<unsigned char> smem;
    ucontext_t scheduler{};
    jmp_buf scheduler_jb;
    unsigned current = 0;
    void (*body)(void**) = nullptr;
    void** args = nullptr;
};

Block g_block;
std::vector<char*> g_stacks;  // one per thread of the largest block so far
int g_order = 0;  // 0 forward, 1 reverse, 2 shuffled
unsigned long long g_seed = 1;
std::string g_error;

std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> r;
    return r;
}

void set_thread_index(unsigned t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

void thread_main() {
    g_block.body(g_block.args);
    g_block.threads[g_block.current].state = State::Done;
    _longjmp(g_block.scheduler_jb, 1);
}

void yield_to_scheduler(State s) {
    Thread& t = g_block.threads[g_block.current];
    t.state = s;
    if (!_setjmp(t.jb)) _longjmp(g_block.scheduler_jb, 1);
}

// Run thread i until it waits at a barrier or returns.
void resume(unsigned i) {
    Thread& t = g_block.threads[i];
    g_block.current = i;
    set_thread_index(i);
    if (_setjmp(g_block.scheduler_jb)) return;
    if (!t.started) {
        t.started = true;
        swapcontext(&g_block.scheduler, &t.ctx);
    } else {
        _longjmp(t.jb, 1);
    }
}

// Release the warps whose every live lane named by the waiters' masks has
// arrived, else the block barrier when every live thread is at it. Returns
// false when nothing can go on.
bool release(std::string& why) {
    const unsigned n = (unsigned)g_block.threads.size();
    bool any = false;
    for (unsigned w = 0; w * 32 < n; w++) {
        unsigned mask = 0;
        for (unsigned l = 0; l < 32 && w * 32 + l < n; l++) {
            const Thread& t = g_block.threads[w * 32 + l];
            if (t.state == State::AtWarp) mask |= t.warp_mask;
        }
        if (!mask) continue;
        bool ready = true;
        for (unsigned l = 0; l < 32; l++) {
            if (!((mask >> l) & 1u) || w * 32 + l >= n) continue;
            const State s = g_block.threads[w * 32 + l].state;
            if (s != State::AtWarp && s != State::Done) ready = false;
        }
        if (!ready) continue;
        for (unsigned l = 0; l < 32 && w * 32 + l < n; l++) {
            Thread& t = g_block.threads[w * 32 + l];
            if (t.state == State::AtWarp) t.state = State::Run;
        }
        any = true;
    }
    if (any) return true;
    bool all_at_block = true, any_at_block = false;
    for (const Thread& t : g_block.threads) {
        if (t.state == State::AtBlock) any_at_block = true;
        else if (t.state != State::Done) all_at_block = false;
    }
    if (any_at_block && all_at_block) {
        for (Thread& t : g_block.threads)
            if (t.state == State::AtBlock) t.state = State::Run;
        return true;
    }
    why = "deadlock: threads wait at different barriers (";
    for (unsigned i = 0; i < n; i++) {
        const State s = g_block.threads[i].state;
        if (s == State::AtBlock || s == State::AtWarp) {
            why += "thread " + std::to_string(i) + (s == State::AtBlock ? " at __syncthreads" : " at a warp barrier");
            why += "; ";
            if (why.size() > 400) break;
        }
    }
    why += ")";
    return false;
}

bool run_block(std::mt19937_64& rng) {
    const unsigned n = (unsigned)g_block.threads.size();
    std::vector<unsigned> order(n);
    for (unsigned i = 0; i < n; i++) order[i] = g_order == 1 ? n - 1 - i : i;
    for (unsigned i = 0; i < n; i++) {
        Thread& t = g_block.threads[i];
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = t.stack;
        t.ctx.uc_stack.ss_size = STACK_BYTES;
        t.ctx.uc_link = nullptr;
        makecontext(&t.ctx, thread_main, 0);
        t.state = State::Run;
        t.started = false;
    }
    for (;;) {
        if (g_order == 2) std::shuffle(order.begin(), order.end(), rng);
        for (unsigned i : order) {
            if (g_block.threads[i].state != State::Run) continue;
            resume(i);
        }
        bool done = std::all_of(g_block.threads.begin(), g_block.threads.end(),
                                [](const Thread& t) { return t.state == State::Done; });
        if (done) return true;
        if (!release(g_error)) return false;
    }
}

}  // namespace

void block_barrier() { yield_to_scheduler(State::AtBlock); }

void warp_barrier(unsigned mask) {
    Thread& t = g_block.threads[g_block.current];
    t.warp_mask = mask | (1u << (g_block.current & 31));
    yield_to_scheduler(State::AtWarp);
}

unsigned long long* warp_slots() { return &g_block.slots[(g_block.current / 32) * 32]; }
unsigned lane_id() { return g_block.current & 31; }
void* dyn_smem() { return g_block.smem.data(); }

Registration::Registration(const char* name, Kernel k) { registry()[name] = k; }

}  // namespace emu

// The source is read at issue (a kernel never writes what it copies from
// during the copy); the destination is written only at the wait.
void emu_cp_async4(unsigned* dst, const unsigned* src) {
    emu::g_block.threads[emu::g_block.current].copies.open.emplace_back(dst, *src);
}

void emu_cp_async_commit() {
    auto& c = emu::g_block.threads[emu::g_block.current].copies;
    c.groups.push_back(std::move(c.open));
    c.open.clear();
}

void emu_cp_async_wait(int newest_left) {
    auto& c = emu::g_block.threads[emu::g_block.current].copies;
    if (newest_left == 0) emu_cp_async_commit();
    while ((int)c.groups.size() > newest_left) {
        for (auto& [dst, v] : c.groups.front()) *dst = v;
        c.groups.erase(c.groups.begin());
    }
}

using namespace emu;

extern "C" {

// The thread order between barriers: 0 forward, 1 reverse, 2 shuffled with `seed`.
void emu_set_order(int order, unsigned long long seed) {
    g_order = order;
    g_seed = seed;
}

// Whether a kernel of this name was compiled in.
int emu_has_kernel(const char* name) { return registry().count(name) ? 1 : 0; }

// The last launch's error, or "".
const char* emu_last_error() { return g_error.c_str(); }

// Run `name` over the grid, with the arguments laid out as cuLaunchKernel
// takes them (args[i] points at argument i). Returns 0, or -1 with
// emu_last_error saying why (unknown kernel, bad shape, deadlock).
int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
               unsigned smem_bytes, void** args) {
    g_error.clear();
    auto it = registry().find(name);
    if (it == registry().end()) {
        g_error = std::string("no kernel named ") + name;
        return -1;
    }
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > 1024 || gx == 0 || gy == 0 || gz == 0 || smem_bytes > 256 * 1024) {
        g_error = "bad launch shape";
        return -1;
    }
    while (g_stacks.size() < threads) {
        void* st = mmap(nullptr, GUARD_BYTES + STACK_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (st == MAP_FAILED || mprotect(st, GUARD_BYTES, PROT_NONE) != 0) {
            g_error = "could not map a fiber stack";
            return -1;
        }
        g_stacks.push_back((char*)st + GUARD_BYTES);
    }
    g_block.threads.assign(threads, Thread{});
    for (unsigned long long i = 0; i < threads; i++) g_block.threads[i].stack = g_stacks[i];
    g_block.body = it->second;
    g_block.args = args;
    blockDim = dim3{bx, by, bz};
    gridDim = dim3{gx, gy, gz};
    std::mt19937_64 rng(g_seed);
    std::vector<dim3> blocks;
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) blocks.push_back(dim3{x, y, z});
    if (g_order == 1) std::reverse(blocks.begin(), blocks.end());
    if (g_order == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
    bool ok = true;
    for (const dim3& b : blocks) {
        blockIdx = b;
        g_block.slots.assign(((threads + 31) / 32) * 32, 0ull);
        g_block.smem.assign(smem_bytes + CANARY_BYTES, 0xff);  // NaN in every float
        if (__start_emu_shared && __stop_emu_shared)
            memset(__start_emu_shared, 0xff, (size_t)(__stop_emu_shared - __start_emu_shared));
        ok = run_block(rng);
        const std::string where =
            "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + ") of " + name;
        if (!ok) {
            g_error = where + ": " + g_error;
            break;
        }
        for (size_t i = smem_bytes; i < g_block.smem.size(); i++) {
            if (g_block.smem[i] != 0xff) {
                g_error = where + ": wrote past its " + std::to_string(smem_bytes) + " bytes of dynamic shared memory";
                ok = false;
                break;
            }
        }
        if (!ok) break;
    }
    return ok ? 0 : -1;
}
}
