// The runtime every core call goes through: one core thread, the routing of the core's process-global
// callbacks to the Python thread that waits for the call, errors, and result-buffer ownership.
//
// Why a thread of our own: the core's prompt parser and tokenizers recurse once per character (std::regex),
// so the caller's stack would bound the prompt length (a few hundred characters on a 256 KiB thread); the
// core keeps its callbacks in process globals, so calls run one at a time anyway; and nothing Python-side runs
// on a core thread (logging, callbacks and signal handlers run on the waiting Python thread), so a callback
// that calls back into the package, a garbage collection in a log handler or a signal handler can neither
// deadlock nor lose its exception.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "stable-diffusion.h"

namespace py = pybind11;

namespace sdcpp {

// Raised as sdcpp_py.SdcppError (a RuntimeError) with the core's own error lines.
class CoreError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Raised as sdcpp_py.Cancelled (a subclass of SdcppError) when Context.cancel() or close() stopped a call.
class CancelledError : public CoreError {
   public:
    using CoreError::CoreError;
};

// Held by the core thread for each call.
std::mutex& core_mutex();

class Runtime;

// One call into the core. The submitting Python thread waits for it and meanwhile runs, with the GIL, what
// the core asks of Python: log lines, progress and preview callbacks.
class CoreCall {
   public:
    // A log line, progress step or preview frame for the waiting thread to handle.
    struct Request {
        enum class Kind { log, progress, preview } kind = Kind::log;
        int level = 0;  // log: a Python logging level
        std::string text;
        int step = 0, steps = 0;  // progress and preview
        float seconds = 0.0f;
        int frame_count          = 0;  // preview: the frames stay valid while the core thread waits
        const sd_image_t* frames = nullptr;
        bool is_noisy            = false;
        uint64_t seq             = 0;
    };

    // `what` names the call in messages ("loading a Context", "generate_image", ...).
    CoreCall(std::string what, std::function<void()> work);

    const std::string what;
    const std::function<void()> work;  // runs on the core thread without the GIL, under core_mutex()

    // Cancellation: the call stops once the epoch moves past start_epoch (Context.cancel/close).
    const std::atomic<uint64_t>* cancel_epoch = nullptr;
    uint64_t start_epoch                      = 0;
    bool always_runs = false;  // frees run even when a stop is requested (cancel, shutdown)

    // After the call: what went wrong, in the order raise_errors() raises it.
    std::exception_ptr python_error;    // raised by a callback, log or signal handler: re-raised as is
    std::exception_ptr core_exception;  // a C++ exception that escaped the core
    bool skipped = false;               // never started (stopped before its turn)

    bool cancelled() const { return cancel_epoch != nullptr && cancel_epoch->load() != start_epoch; }
    // A request handed to the waiting thread (a callback or log handler) has been unhandled for over `limit`.
    bool waiting_on_its_caller_longer_than(std::chrono::milliseconds limit) const;
    bool stop_requested() const;                         // any thread
    bool aborted() const { return aborting_.load(); }    // the core was told to stop this call
    bool left_queued() const { return detached_.load(); }  // its waiter left before it ran (see leave_queued)
    // `what_failed` followed by the error lines the core logged during this call (from any of its threads).
    std::string with_core_log(const std::string& what_failed) const;
    // The warning lines the core logged during this call.
    std::vector<std::string> warning_lines() const;
    // Raises python_error, else a C++ exception of the core, else Cancelled if a cancel stopped the call.
    void raise_errors();

    // The core's callbacks, on core threads, hand their work to the waiting thread through these.
    static void note_error_line(CoreCall& call, const std::string& line);
    static void note_warning_line(CoreCall& call, const std::string& line);
    static void route_log(CoreCall& call, int level, std::string text);
    static void route_progress(CoreCall& call, int step, int steps, float seconds);
    static void route_preview(CoreCall& call, int step, int frame_count, const sd_image_t* frames, bool is_noisy);
    static bool should_abort(CoreCall& call);
    // The waiting thread's loop: hands requests to Python until the call is done.
    static void wait_as_caller(const std::shared_ptr<CoreCall>& call, const py::object& progress,
                               const py::object& preview);

   private:
    friend class Runtime;
    friend void run_on_core_thread(const std::shared_ptr<CoreCall>&, const py::object&, const py::object&);
    friend bool run_detached(const std::shared_ptr<CoreCall>&);

    void post(Request request, bool wait_until_handled);
    static void leave_queued(CoreCall& call);
    void record_python_error();  // inside a catch of py::error_already_set, with the GIL

    std::atomic<bool> failed_{false};    // python_error is set
    std::atomic<bool> aborting_{false};  // the core was told to abort
    bool started_      = false;          // guarded by the runtime's queue mutex
    std::atomic<bool> detached_{false};  // nobody waits (or the waiter left): nothing is handed over
    bool has_progress_ = false;
    bool has_preview_  = false;
    int log_enabled_mask_ = 0;           // the levels the sdcpp_py logger would emit, a bit per level

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool done_ = false;
    std::deque<Request> requests_;
    uint64_t posted_  = 0;
    uint64_t handled_ = 0;
    std::chrono::steady_clock::time_point unhandled_since_;  // when the oldest unhandled request was posted
    std::deque<std::string> error_lines_;
    std::deque<std::string> warning_lines_;
};

// Runs `call` on the core thread and waits for it, handing the core's log lines to the sdcpp_py logger and
// its steps and previews to `progress` / `preview` (None: not asked for) on this thread. Needs the GIL
// (released while waiting). Raises at once, without running it, when this thread is already waiting for a core
// call (a callback calling back in) or the interpreter is shutting down. The call's own errors are left in it
// for raise_errors(), so that the caller can take ownership of results first.
void run_on_core_thread(const std::shared_ptr<CoreCall>& call, const py::object& progress = py::none(),
                        const py::object& preview = py::none());
// Queues `call` and returns at once (frees from __del__ or from inside a callback); false at shutdown.
bool run_detached(const std::shared_ptr<CoreCall>& call);
// This thread is waiting for a core call (so it is running one of that call's callbacks or handlers).
bool inside_core_call();
// Interpreter exit began: no new core calls (frees are left to the process's end).
bool core_thread_stopped();
// The longest prompt, in UTF-8 bytes, the core thread's stack is sized for.
size_t max_prompt_bytes();

// Installs the core's (global) preview callback for one call; runs on the core thread.
class PreviewScope {
   public:
    PreviewScope(bool enabled, int mode, int interval, bool noisy);
    ~PreviewScope();
    PreviewScope(const PreviewScope&)            = delete;
    PreviewScope& operator=(const PreviewScope&) = delete;

   private:
    bool enabled_;
};

// Frees what `state->ctx` owns (a core context or upscaler) on the core thread. With `wait`, and unless this
// thread is inside a core call's callback (it would wait for itself), returns once it is freed; otherwise the
// free is queued behind the call in flight. A wait ends early, the free still queued, at Ctrl-C (raised) or
// once the call ahead has waited a second for one of its callbacks (which may wait for this thread). At
// interpreter exit it is left to the process's end: freeing it here could race with a core thread still busy
// or run during finalization.
template <typename State>
void free_on_core_thread(const std::shared_ptr<State>& state, const std::string& what, bool wait) {
    auto free = std::make_shared<CoreCall>(what, [state] { state->ctx.reset(); });
    free->always_runs = true;
    if (wait && !inside_core_call() && !core_thread_stopped()) {
        run_on_core_thread(free);
        if (free->left_queued()) {  // the core thread owns it now: only this thread's own error is read
            if (free->python_error) {
                std::rethrow_exception(std::exchange(free->python_error, nullptr));
            }
            return;
        }
        free->raise_errors();
    } else if (!run_detached(free)) {
        (void)state->ctx.release();
    }
}

// Releases the GIL for a stretch of native work. Unlike py::gil_scoped_release, a daemon thread that comes back
// after interpreter exit began waits for the process to end instead of taking the GIL back inside a destructor
// (Python ends such threads there, which would terminate the process).
class GilRelease {
   public:
    GilRelease();
    ~GilRelease();
    GilRelease(const GilRelease&)            = delete;
    GilRelease& operator=(const GilRelease&) = delete;

   private:
    PyThreadState* state_;
};

// A (H, W, C) uint8 array that owns the core's malloc'ed pixels through a capsule: no copy.
py::array_t<uint8_t> adopt_image(sd_image_t image);

// UTF-8 text from the core (paths may hold any bytes) as a Python str; invalid bytes become U+FFFD.
py::str text_from_core(const std::string& text);

void register_runtime(py::module_& m);

}  // namespace sdcpp
