// The core thread, the routing of the core's callbacks to the waiting Python thread, and result ownership.
#include "common.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#ifdef _WIN32
#define NOMINMAX  // windows.h's min/max macros would break std::min
#define WIN32_LEAN_AND_MEAN
#include <process.h>
#include <windows.h>
#else
#include <pthread.h>
#endif

#include "ggml.h"

namespace sdcpp {

namespace {

using namespace std::chrono_literals;

// The core's parser and tokenizers need about 280 bytes of stack per prompt byte (std::regex recursion,
// measured); with a quarter of the stack as the budget a prompt of max_prompt_bytes() always fits.
constexpr size_t kPreferredStackBytes = size_t(256) << 20;
constexpr size_t kFallbackStackBytes  = size_t(32) << 20;
constexpr size_t kStackBytesPerPromptByte = 1024;
constexpr size_t kMaxPromptBytes          = 100000;
// How often a waiting thread looks at signals and at cancellation of a call still queued.
constexpr auto kPoll = 50ms;
// A close() stops waiting for its free once the call ahead of it has waited this long for one of its callbacks:
// that callback may be waiting for the closing thread.
constexpr auto kCallbackStuck = std::chrono::milliseconds(1000);
constexpr size_t kErrorLines  = 8;
constexpr size_t kOrphanLines = 1000;

// Set false at interpreter exit: nothing may call into a finalizing Python.
std::atomic<bool> python_alive{true};
// Set at interpreter exit: no new calls, and calls in flight stop.
std::atomic<bool> shutting_down{false};

thread_local CoreCall* waiting_for = nullptr;  // the call this thread is waiting for
thread_local bool running_core_work = false;     // this is the core thread, inside a call's work
unsigned long main_thread_ident = 0;             // Python's main thread: never parked at exit

// A GGML_ASSERT / GGML_ABORT, or an integer division by zero, on the core thread: ends the call, not the process.
class CoreAbort : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

#if defined(__GNUC__) && !defined(_WIN32)
extern "C" int omp_get_level(void) __attribute__((weak));  // libgomp, when ggml-cpu is linked in with OpenMP
bool in_parallel_region() { return omp_get_level != nullptr && omp_get_level() > 0; }
#else
bool in_parallel_region() { return false; }
#endif

// Checks in a backend's compute code may run inside a parallel region (or beside ggml's own worker threads),
// which an exception must not leave; checks in ggml.c / gguf.cpp / the allocator and the core itself run while
// a model or graph is built.
bool raised_by_compute_code(const char* message) {
    for (const char* folder : {"ggml-cpu", "ggml-cuda", "ggml-vulkan", "ggml-metal", "ggml-blas", "ggml-sycl"}) {
        if (message != nullptr && std::strstr(message, folder) != nullptr) {
            return true;
        }
    }
    return false;
}

// ggml calls this before abort(). Model files whose shapes make the core build an impossible model end in such
// asserts while the model or a graph is built, on the core thread: an exception unwinds that call instead.
// Inside a parallel compute (an exception cannot leave it) or on another thread, ggml aborts as before.
void abort_to_exception(const char* message) {
#ifndef _MSC_VER  // MSVC (/EHsc) may skip destructors of frames calling ggml's C functions: keep the abort there
    if (running_core_work && !in_parallel_region() && !raised_by_compute_code(message)) {
        throw CoreAbort(std::string("the core's check failed: ") + (message ? message : ""));
    }
#endif
    fprintf(stderr, "%s\n", message ? message : "");
}

#ifdef SDCPP_FPE_TO_EXCEPTION
struct sigaction previous_fpe_action;

// The core is compiled with -fnon-call-exceptions (CMakeLists.txt), so a trapping division can throw.
void fpe_to_exception(int signal_number, siginfo_t* info, void* context) {
    if (running_core_work && !in_parallel_region()) {
        throw CoreAbort("integer division by zero in the core (a model file whose shapes give a zero dimension?)");
    }
    // Not ours: put the previous disposition back; returning re-executes the instruction under it.
    sigaction(SIGFPE, &previous_fpe_action, nullptr);
    (void)signal_number, (void)info, (void)context;
}
#endif

int python_log_level(sd_log_level_t level) {
    switch (level) {
        case SD_LOG_DEBUG:
            return 10;
        case SD_LOG_INFO:
            return 20;
        case SD_LOG_WARN:
            return 30;
        default:
            return 40;
    }
}

int level_bit(int python_level) { return 1 << (python_level / 10); }

// Log lines with nobody to hand them to (a detached call, or a core thread outside any call): kept for the
// next waiting caller.
std::mutex* orphan_mutex_ptr = new std::mutex();  // replaced in a forked child (a gone thread may hold it)
std::deque<std::pair<int, std::string>>* orphan_lines = new std::deque<std::pair<int, std::string>>();
std::mutex* core_mutex_ptr = new std::mutex();

void keep_orphan(int level, std::string text) {
    std::lock_guard<std::mutex> lock(*orphan_mutex_ptr);
    orphan_lines->emplace_back(level, std::move(text));
    if (orphan_lines->size() > kOrphanLines) {
        orphan_lines->pop_front();
    }
}

void emit_log(int level, const std::string& text) {  // with the GIL
    py::object logger = py::module_::import("logging").attr("getLogger")("sdcpp_py");
    if (logger.attr("isEnabledFor")(level).cast<bool>()) {
        logger.attr("log")(level, "%s", text_from_core(text));
    }
}

void emit_orphans() {  // with the GIL; a logging error propagates to the caller
    std::deque<std::pair<int, std::string>> lines;
    {
        std::lock_guard<std::mutex> lock(*orphan_mutex_ptr);
        lines.swap(*orphan_lines);
    }
    for (const auto& [level, text] : lines) {
        emit_log(level, text);
    }
}

[[noreturn]] void park_forever() {
    // A daemon thread at interpreter exit: taking the GIL back would end the thread inside a destructor
    // (std::terminate), so it waits here for the process to end.
    for (;;) {
        std::this_thread::sleep_for(1h);
    }
}

}  // namespace

class Runtime {
   public:
    static Runtime*& instance() {
        static Runtime* runtime = new Runtime();  // never destroyed: the core thread may outlive statics
        return runtime;
    }
    static Runtime& get() { return *instance(); }

    void submit(const std::shared_ptr<CoreCall>& call) {
        std::lock_guard<std::mutex> lock(mutex_);
        start_thread_locked();
        queue_.push_back(call);
        wake_.notify_one();
    }

    // Removes a call that has not started; true if it was removed.
    bool withdraw(CoreCall* call) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
            if (it->get() == call) {
                queue_.erase(it);
                return true;
            }
        }
        return false;
    }

    CoreCall* active() const { return active_.load(); }

    // The call the core thread runs now, if any (kept alive while looked at).
    std::shared_ptr<CoreCall> running() {
        std::lock_guard<std::mutex> lock(mutex_);
        return running_;
    }

    size_t stack_bytes() {
        std::lock_guard<std::mutex> lock(mutex_);
        start_thread_locked();
        return stack_bytes_;
    }

    // Waits (without the GIL) for the queue to drain and the running call to end, then ends the thread.
    bool stop(std::chrono::milliseconds limit) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!thread_started_) {
            return true;
        }
        const bool idle = idle_.wait_for(lock, limit, [&] { return queue_.empty() && !busy_; });
        if (!idle) {
            return false;
        }
        stop_ = true;
        wake_.notify_one();
        lock.unlock();
        join();
        return true;
    }

    // In a forked child only the forking thread exists: start over with a new runtime (the old one's
    // mutexes may be held by threads that are gone).
    static void reset_after_fork() {
        instance()      = new Runtime();
        core_mutex_ptr  = new std::mutex();
        orphan_mutex_ptr = new std::mutex();
        orphan_lines     = new std::deque<std::pair<int, std::string>>();  // the old one may be mid-change
    }

   private:
    void start_thread_locked() {
        if (thread_started_) {
            return;
        }
        for (size_t bytes : {kPreferredStackBytes, kFallbackStackBytes}) {
            if (launch(bytes)) {
                thread_started_ = true;
                stack_bytes_    = bytes;
                return;
            }
        }
        throw std::runtime_error("sdcpp_py could not start its core thread (no memory for its stack?)");
    }

#ifdef _WIN32
    static unsigned __stdcall entry(void* self) {
        static_cast<Runtime*>(self)->loop();
        return 0;
    }
    bool launch(size_t bytes) {
        handle_ = reinterpret_cast<HANDLE>(
            _beginthreadex(nullptr, static_cast<unsigned>(bytes), &entry, this, STACK_SIZE_PARAM_IS_A_RESERVATION,
                           nullptr));
        return handle_ != nullptr;
    }
    void join() {
        WaitForSingleObject(handle_, INFINITE);
        CloseHandle(handle_);
    }
    HANDLE handle_ = nullptr;
#else
    static void* entry(void* self) {
        static_cast<Runtime*>(self)->loop();
        return nullptr;
    }
    bool launch(size_t bytes) {
        pthread_attr_t attributes;
        if (pthread_attr_init(&attributes) != 0) {
            return false;
        }
        bool ok = pthread_attr_setstacksize(&attributes, bytes) == 0 &&
                  pthread_create(&thread_, &attributes, &entry, this) == 0;
        pthread_attr_destroy(&attributes);
        return ok;
    }
    void join() { pthread_join(thread_, nullptr); }
    pthread_t thread_{};
#endif

    void loop() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (queue_.empty()) {
                return;  // stop_
            }
            std::shared_ptr<CoreCall> call = std::move(queue_.front());
            queue_.pop_front();
            call->started_ = true;
            busy_          = true;
            running_       = call;
            lock.unlock();
            const bool run = call->always_runs || !call->stop_requested();
            if (run) {
                std::lock_guard<std::mutex> core_lock(core_mutex());
                active_.store(call.get());
                running_core_work = true;
                try {
                    call->work();
                } catch (...) {
                    call->core_exception = std::current_exception();
                }
                running_core_work = false;
                active_.store(nullptr);
            }
            {
                std::lock_guard<std::mutex> call_lock(call->mutex_);
                call->skipped = !run;
                call->done_   = true;
            }
            call->changed_.notify_all();
            call.reset();
            lock.lock();
            running_.reset();
            busy_ = false;
            idle_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_, idle_;
    std::deque<std::shared_ptr<CoreCall>> queue_;
    bool thread_started_ = false;
    bool stop_           = false;
    bool busy_           = false;
    size_t stack_bytes_  = 0;
    std::atomic<CoreCall*> active_{nullptr};
    std::shared_ptr<CoreCall> running_;  // guarded by mutex_
};

namespace {

// The core's global C callbacks, installed once at import.
void log_trampoline(sd_log_level_t level, const char* text, void*) {
    if (!python_alive.load()) {
        return;
    }
    std::string message = text ? text : "";
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) {
        message.pop_back();
    }
    int py_level = python_log_level(level);
    if (PyGILState_GetThisThreadState() != nullptr) {
        // A Python thread's own call into the core or ggml (device listing, backend loading, a test hook's
        // graph; Canny, with the GIL let go): its lines are not the active call's, whose waiter may need the GIL
        // this thread holds. Native threads (the core's, ggml's, the loader's) have no Python thread state.
        // (Not PyGILState_Check(): once a subinterpreter has existed it answers yes on every thread, and the
        // core thread then ran Python without the GIL.)
        py::gil_scoped_acquire gil;  // taken again if this thread let it go
        try {
            emit_log(py_level, message);
        } catch (py::error_already_set& error) {
            error.discard_as_unraisable("sdcpp_py's log handler");
        }
        return;
    }
    CoreCall* call = Runtime::get().active();
    if (call == nullptr) {
        keep_orphan(py_level, std::move(message));
        return;
    }
    if (call->aborted() && level > SD_LOG_INFO) {
        py_level = 10;  // "compute failed" and the like are the expected echo of our own abort
    }
    if (level == SD_LOG_ERROR) {
        CoreCall::note_error_line(*call, message);
    } else if (level == SD_LOG_WARN) {
        CoreCall::note_warning_line(*call, message);
    }
    CoreCall::route_log(*call, py_level, std::move(message));
}

void progress_trampoline(int step, int steps, float seconds, void*) {
    CoreCall* call = Runtime::get().active();
    if (call != nullptr) {
        CoreCall::route_progress(*call, step, steps, seconds);
    }
}

void preview_trampoline(int step, int frame_count, sd_image_t* frames, bool is_noisy, void*) {
    CoreCall* call = Runtime::get().active();
    if (call != nullptr && frame_count > 0 && frames != nullptr) {
        CoreCall::route_preview(*call, step, frame_count, frames, is_noisy);
    }
}

bool abort_trampoline(void*) {
    CoreCall* call = Runtime::get().active();
    return call != nullptr && CoreCall::should_abort(*call);
}

std::atomic<size_t> image_buffers{0};

}  // namespace

// -- CoreCall -------------------------------------------------------------------------------------------------

CoreCall::CoreCall(std::string what_, std::function<void()> work_) : what(std::move(what_)), work(std::move(work_)) {}

bool CoreCall::stop_requested() const {
    return failed_.load() || cancelled() || (shutting_down.load() && !always_runs);
}

namespace {

// Exception texts become Python str through strict UTF-8 decoding, and the core's lines may quote paths that are
// not UTF-8: invalid bytes become U+FFFD here, so the message is never lost.
std::string valid_utf8(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n    = text.size();
    for (size_t i = 0; i < n;) {
        const unsigned char c = bytes[i];
        size_t length         = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        bool ok               = length != 0 && i + length <= n;
        for (size_t k = 1; ok && k < length; ++k) {
            ok = (bytes[i + k] & 0xC0) == 0x80;
        }
        if (ok && length > 1) {  // no overlong forms, surrogates or values past U+10FFFF
            const unsigned c1 = bytes[i + 1];
            ok = !(c == 0xC0 || c == 0xC1) && !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0) &&
                 !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90) && c <= 0xF4;
        }
        if (ok) {
            out.append(text, i, length);
            i += length;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

}  // namespace

std::string CoreCall::with_core_log(const std::string& what_failed) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string joined = what_failed;
    for (size_t i = 0; i < error_lines_.size(); ++i) {
        joined += (i == 0 ? ": " : "\n") + error_lines_[i];
    }
    return valid_utf8(joined);
}

void CoreCall::raise_errors() {
    if (python_error) {
        std::rethrow_exception(std::exchange(python_error, nullptr));  // unchanged, traceback included
    }
    if (core_exception) {
        std::string reason = "an unknown exception";
        try {
            std::rethrow_exception(std::exchange(core_exception, nullptr));
        } catch (const std::exception& error) {
            reason = error.what();
        } catch (...) {
        }
        throw CoreError(with_core_log(what + " failed inside the core (" + reason + ")"));
    }
    if (cancelled()) {
        throw CancelledError(what + " was cancelled (cancel() or close())");
    }
    if (skipped && shutting_down.load()) {
        throw std::runtime_error(what + " did not run: the interpreter is shutting down");
    }
}

void CoreCall::note_error_line(CoreCall& call, const std::string& line) {
    std::lock_guard<std::mutex> lock(call.mutex_);
    call.error_lines_.push_back(line);
    if (call.error_lines_.size() > kErrorLines) {
        call.error_lines_.pop_front();
    }
}

void CoreCall::note_warning_line(CoreCall& call, const std::string& line) {
    std::lock_guard<std::mutex> lock(call.mutex_);
    call.warning_lines_.push_back(line);
    if (call.warning_lines_.size() > 4 * kErrorLines) {
        call.warning_lines_.pop_front();
    }
}

std::vector<std::string> CoreCall::warning_lines() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> lines;
    for (const auto& line : warning_lines_) {
        lines.push_back(valid_utf8(line));
    }
    return lines;
}

void CoreCall::post(Request request, bool wait_until_handled) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (detached_.load()) {  // its waiter left (interrupted while it waited for a free): nobody to hand it to
        if (request.kind == Request::Kind::log) {
            keep_orphan(request.level, std::move(request.text));
        }
        return;
    }
    if (handled_ == posted_) {
        unhandled_since_ = std::chrono::steady_clock::now();
    }
    request.seq = ++posted_;
    const uint64_t seq = request.seq;
    requests_.push_back(std::move(request));
    changed_.notify_all();
    if (wait_until_handled) {
        while (!changed_.wait_for(lock, 100ms, [&] { return handled_ >= seq || detached_.load(); })) {
            if (!python_alive.load()) {
                return;  // the caller is gone with the interpreter
            }
        }
    }
}

void CoreCall::route_log(CoreCall& call, int level, std::string text) {
    if ((call.log_enabled_mask_ & level_bit(level)) == 0) {
        return;
    }
    if (call.detached_) {
        keep_orphan(level, std::move(text));
        return;
    }
    Request request;
    request.kind  = Request::Kind::log;
    request.level = level;
    request.text  = std::move(text);
    // Handed over and waited for: a log handler sees the core where the line was written (and can cancel).
    call.post(std::move(request), !shutting_down.load());
}

void CoreCall::route_progress(CoreCall& call, int step, int steps, float seconds) {
    if (!call.has_progress_ || call.detached_ || call.failed_.load()) {
        return;
    }
    Request request;
    request.kind    = Request::Kind::progress;
    request.step    = step;
    request.steps   = steps;
    request.seconds = seconds;
    call.post(std::move(request), true);
}

void CoreCall::route_preview(CoreCall& call, int step, int frame_count, const sd_image_t* frames, bool is_noisy) {
    if (!call.has_preview_ || call.detached_ || call.failed_.load()) {
        return;
    }
    Request request;
    request.kind        = Request::Kind::preview;
    request.step        = step;
    request.frame_count = frame_count;
    request.frames      = frames;
    request.is_noisy    = is_noisy;
    call.post(std::move(request), true);  // the core frees the frames when we return
}

bool CoreCall::waiting_on_its_caller_longer_than(std::chrono::milliseconds limit) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return handled_ < posted_ && !detached_.load() && std::chrono::steady_clock::now() - unhandled_since_ > limit;
}

bool CoreCall::should_abort(CoreCall& call) {
    const bool stop = call.stop_requested();
    if (stop) {
        call.aborting_.store(true);
    }
    return stop;
}

void CoreCall::record_python_error() {  // inside a catch block
    if (!python_error) {
        python_error = std::current_exception();
    }
    failed_.store(true);
}

namespace {

// With the GIL: one request of the core, handed to Python.
void handle_request(CoreCall& call, const CoreCall::Request& request, const py::object& progress,
                    const py::object& preview) {
    using Kind = CoreCall::Request::Kind;
    if (request.kind == Kind::log) {
        emit_log(request.level, request.text);
    } else if (request.kind == Kind::progress) {
        if (!call.python_error && !progress.is_none()) {
            progress(request.step, request.steps, request.seconds);
        }
    } else if (!call.python_error && !preview.is_none()) {
        // The core frees the frames when its callback returns: copy them into one (F, H, W, C) array.
        const sd_image_t& first = request.frames[0];
        py::array_t<uint8_t> stack({static_cast<py::ssize_t>(request.frame_count),
                                    static_cast<py::ssize_t>(first.height), static_cast<py::ssize_t>(first.width),
                                    static_cast<py::ssize_t>(first.channel)});
        const size_t frame_bytes = static_cast<size_t>(first.width) * first.height * first.channel;
        for (int i = 0; i < request.frame_count; ++i) {
            std::memcpy(stack.mutable_data(i), request.frames[i].data, frame_bytes);
        }
        preview(request.step, stack, request.is_noisy);
    }
}

int enabled_levels() {  // with the GIL
    py::object logger = py::module_::import("logging").attr("getLogger")("sdcpp_py");
    int mask = level_bit(40);  // error lines are always handed over (they also go into messages)
    for (int level : {10, 20, 30}) {
        if (logger.attr("isEnabledFor")(level).cast<bool>()) {
            mask |= level_bit(level);
        }
    }
    return mask;
}

// `free` waits behind a call whose callback or log handler has not returned for a while.
bool stuck_behind_a_callback(Runtime& runtime, const CoreCall& free) {
    const std::shared_ptr<CoreCall> ahead = runtime.running();
    return ahead != nullptr && ahead.get() != &free && ahead->waiting_on_its_caller_longer_than(kCallbackStuck);
}

}  // namespace

// The waiter of a queued call leaves; the call runs in its turn, unwatched (its log lines kept for later).
void CoreCall::leave_queued(CoreCall& call) {
    std::deque<Request> left;
    {
        std::lock_guard<std::mutex> lock(call.mutex_);
        call.detached_.store(true);
        left.swap(call.requests_);
    }
    call.changed_.notify_all();  // a log line the core thread waits on is let go
    for (Request& request : left) {
        if (request.kind == Request::Kind::log) {
            keep_orphan(request.level, std::move(request.text));
        }
    }
}

void CoreCall::wait_as_caller(const std::shared_ptr<CoreCall>& call, const py::object& progress,
                              const py::object& preview) {
    Runtime& runtime = Runtime::get();
    CoreCall* const outer = waiting_for;
    waiting_for           = call.get();
    struct Restore {
        CoreCall* outer;
        ~Restore() { waiting_for = outer; }
    } restore{outer};
    for (bool done = false; !done;) {
        std::deque<Request> batch;
        {
            GilRelease release;
            {
                std::unique_lock<std::mutex> lock(call->mutex_);
                call->changed_.wait_for(lock, kPoll, [&] { return call->done_ || !call->requests_.empty(); });
                batch.swap(call->requests_);
                done = call->done_ && batch.empty();
            }
        }
        uint64_t last = 0;
        for (const Request& request : batch) {
            try {
                handle_request(*call, request, progress, preview);
            } catch (...) {  // a callback's exception, or anything else: never leave before the call is done
                call->record_python_error();  // the core stops at its next abort check
            }
            last = request.seq;
        }
        if (last != 0) {
            {
                std::lock_guard<std::mutex> lock(call->mutex_);
                call->handled_ = last;
                call->unhandled_since_ = std::chrono::steady_clock::now();  // the next one waits from now
            }
            call->changed_.notify_all();
        }
        try {
            emit_orphans();
            // Signal handlers run here (main thread only): Ctrl-C or a SIGTERM handler's SystemExit stop the call.
            if (PyErr_CheckSignals() != 0) {
                throw py::error_already_set();
            }
        } catch (...) {
            call->record_python_error();
        }
        if (!done && call->always_runs && (call->failed_.load() || stuck_behind_a_callback(runtime, *call))) {
            // A free queued behind another thread's call, and Ctrl-C (or a log handler's exception) came: it is
            // raised now instead of after that call. Or that call waits for one of its callbacks, which may wait
            // for this thread (one that joins the thread closing): stop waiting. The free runs in its turn.
            leave_queued(*call);
            break;
        }
        if (&runtime != &Runtime::get()) {
            // Forked inside a callback: this child has no core thread running the call.
            call->core_exception = std::make_exception_ptr(
                std::runtime_error("the process forked while this call ran; it cannot finish in the child"));
            break;
        }
        if (!done && !call->always_runs && call->stop_requested() && runtime.withdraw(call.get())) {
            call->skipped = true;  // stopped while still queued: it never runs
            done          = true;
        }
    }
    if (shutting_down.load() && !call->always_runs && (call->skipped || call->aborted())) {
        // Stopped by interpreter exit: only daemon threads still wait then (others were joined first). Python
        // ends them at exit wherever they are; this one waits for that quietly instead of raising.
        PyEval_SaveThread();
        park_forever();
    }
}

// -- entry points ---------------------------------------------------------------------------------------------

std::mutex& core_mutex() { return *core_mutex_ptr; }

bool inside_core_call() { return waiting_for != nullptr; }

bool core_thread_stopped() { return shutting_down.load(); }

void run_on_core_thread(const std::shared_ptr<CoreCall>& call, const py::object& progress,
                        const py::object& preview) {
    if (waiting_for != nullptr) {
        throw std::runtime_error(
            call->what + " was started from inside a callback (progress, preview, log or signal handler) of " +
            waiting_for->what +
            " on the same thread; the core runs one call at a time, so it would wait forever. Start it after "
            "that call returns (cancel() and close() do work from callbacks)");
    }
    if (shutting_down.load()) {
        throw std::runtime_error(call->what + " cannot start: the interpreter is shutting down");
    }
    call->log_enabled_mask_ = enabled_levels();
    call->has_progress_     = !progress.is_none();
    call->has_preview_      = !preview.is_none();
    Runtime::get().submit(call);
    CoreCall::wait_as_caller(call, progress, preview);
}

bool run_detached(const std::shared_ptr<CoreCall>& call) {
    if (shutting_down.load()) {
        return false;
    }
    call->detached_         = true;
    call->log_enabled_mask_ = level_bit(30) | level_bit(40);
    Runtime::get().submit(call);
    return true;
}

size_t max_prompt_bytes() {
    return std::min(kMaxPromptBytes, Runtime::get().stack_bytes() / kStackBytesPerPromptByte);
}

PreviewScope::PreviewScope(bool enabled, int mode, int interval, bool noisy) : enabled_(enabled) {
    if (enabled_) {
        sd_set_preview_callback(preview_trampoline, static_cast<preview_t>(mode), interval, !noisy, noisy, nullptr);
    }
}

PreviewScope::~PreviewScope() {
    if (enabled_) {
        sd_set_preview_callback(nullptr, PREVIEW_NONE, 1, false, false, nullptr);
    }
}

GilRelease::GilRelease() : state_(PyEval_SaveThread()) {}

GilRelease::~GilRelease() {
    if (!python_alive.load() && PyThread_get_thread_ident() != main_thread_ident) {
        park_forever();
    }
    PyEval_RestoreThread(state_);
}

py::str text_from_core(const std::string& text) {
    PyObject* decoded = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace");
    if (decoded == nullptr) {
        throw py::error_already_set();
    }
    return py::reinterpret_steal<py::str>(decoded);
}

py::array_t<uint8_t> adopt_image(sd_image_t image) {
    py::capsule owner;
    try {
        owner = py::capsule(image.data, [](void* data) {
            std::free(data);
            --image_buffers;
        });
    } catch (...) {
        std::free(image.data);  // no capsule (MemoryError): nothing else will free it
        throw;
    }
    ++image_buffers;  // from here the capsule frees it, also if the array cannot be made
    const py::ssize_t height = image.height, width = image.width, channels = image.channel;
    return py::array_t<uint8_t>({height, width, channels}, static_cast<uint8_t*>(image.data), owner);
}

void register_runtime(py::module_& m) {
    auto base = py::register_exception<CoreError>(m, "SdcppError", PyExc_RuntimeError);
    py::register_exception<CancelledError>(m, "Cancelled", base);

    sd_set_log_callback(log_trampoline, nullptr);
    // Installed for good: with no callback the core prints progress bars on stdout. Calls without a
    // progress callable get nothing.
    sd_set_progress_callback(progress_trampoline, nullptr);
    sd_set_abort_callback(abort_trampoline, nullptr);
    ggml_set_abort_callback(abort_to_exception);
    main_thread_ident =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
#ifdef SDCPP_FPE_TO_EXCEPTION
    struct sigaction fpe {};
    fpe.sa_sigaction = fpe_to_exception;
    fpe.sa_flags     = SA_SIGINFO | SA_NODEFER;  // we leave the handler by throwing: keep SIGFPE unblocked
    sigemptyset(&fpe.sa_mask);
    sigaction(SIGFPE, &fpe, &previous_fpe_action);
#endif

    m.def("_shutdown", [] {
        // At interpreter exit (atexit): stop what runs in the core and wait for it, so no core thread is still
        // computing while the process tears down its statics.
        shutting_down.store(true);
        bool stopped;
        {
            py::gil_scoped_release release;
            stopped = Runtime::get().stop(std::chrono::seconds(60));
        }
        try {
            emit_orphans();
        } catch (py::error_already_set&) {
        }
        python_alive.store(false);
        {
            // A thread that passed its check just before is waiting for the GIL: let it through now, before
            // finalization would end it inside our code.
            py::gil_scoped_release release;
            std::this_thread::sleep_for(20ms);
        }
        return stopped;
    }, "Stop the core thread at interpreter exit (registered with atexit); False if a call did not end in 60 s.");
    m.def("_reset_after_fork", [] { Runtime::reset_after_fork(); },
          "Start over with a new core thread in a forked child (registered with os.register_at_fork).");
    m.attr("FPE_TO_EXCEPTION") =
#ifdef SDCPP_FPE_TO_EXCEPTION
        true;
#else
        false;
#endif
    m.def("_live_image_buffers", [] { return image_buffers.load(); },
          "Number of core result buffers still owned by numpy arrays (for leak tests).");
    m.def("max_prompt_bytes", &max_prompt_bytes,
          "The longest prompt, in UTF-8 bytes, that the core thread's stack is sized for.");
    m.def("_core_thread_stack_bytes", [] { return Runtime::get().stack_bytes(); },
          "The core thread's stack size in bytes.");
}

}  // namespace sdcpp
