/* ---------------------------------------------------------------------------------------------
   CHAOS's synchronization, shared by the runtime (runtime.hpp) and the contention microbenchmark
   (contention.cpp.j2): spin locks on their own cache lines, and the segmented update. A block of
   shared parameters (one layer's) is split into lock segments; a writer applies its gradient to
   every segment once, each under that segment's lock, in whatever order the segments are free.
   --------------------------------------------------------------------------------------------- */
namespace chaos {

/* A test-and-test-and-set spin lock on its own cache line; nobody else touches that line. */
struct alignas(64) LayerLock {
    std::atomic<int> held{0};
    void lock() {
        while (held.exchange(1, std::memory_order_acquire))
            while (held.load(std::memory_order_relaxed)) {
            }
    }
    bool try_lock() {
        return !held.load(std::memory_order_relaxed) && !held.exchange(1, std::memory_order_acquire);
    }
    void unlock() { held.store(0, std::memory_order_release); }
};

/* update(s) for s = 0 .. n-1 (n <= 64), each under locks[s]: passes over the segments from
   `start` take every free one; only when all segments left are held by other writers does it
   wait (calling before_wait() and after_wait() around the wait) for the first of them. */
template <class Update, class Wait, class Waited>
static void update_segments(LayerLock *locks, int n, int start, Update &&update, Wait &&before_wait,
                            Waited &&after_wait) {
    uint64_t left = n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1;  // segments still to do
    auto run = [&](int s) {
        update(s);
        locks[s].unlock();
        left &= ~(uint64_t(1) << s);
    };
    while (left) {
        bool progressed = false;
        for (int k = 0; k < n; ++k) {
            const int s = (start + k) % n;
            if ((left >> s & 1) && locks[s].try_lock()) {
                run(s);
                progressed = true;
            }
        }
        if (!progressed) {
            int s = start;
            while (!(left >> s & 1)) s = (s + 1) % n;
            before_wait();
            locks[s].lock();
            after_wait();
            run(s);
        }
    }
}

}  // namespace chaos
