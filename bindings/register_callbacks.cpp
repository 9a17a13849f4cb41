// Routing of the core's process-global C callbacks to Python, and result-buffer ownership.
#include "common.hpp"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>

namespace sdcpp {

namespace {

// Set false at interpreter exit: a context freed late must not call into a finalizing Python.
std::atomic<bool> python_alive{true};

thread_local std::deque<std::string> recent_problems;
thread_local CallCallbacks* current_call = nullptr;
// The one generation in the core (the core lock serializes them), for the abort check, which ggml may
// run on a thread of its own.
std::atomic<CallCallbacks*> active_call{nullptr};

std::atomic<bool> sigint_arrived{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT flag is set from a signal handler");
#ifndef _WIN32
struct sigaction python_sigint_action;

void chained_sigint_handler(int signal_number, siginfo_t* info, void* context) {
    sigint_arrived.store(true);
    const struct sigaction& python = python_sigint_action;  // Python's C handler: it queues KeyboardInterrupt
    if (python.sa_flags & SA_SIGINFO) {
        if (python.sa_sigaction != nullptr) {
            python.sa_sigaction(signal_number, info, context);
        }
    } else if (python.sa_handler != SIG_DFL && python.sa_handler != SIG_IGN && python.sa_handler != nullptr) {
        python.sa_handler(signal_number);
    }
}
#endif

bool core_abort_callback(void*) { return abort_requested_for_active_call(); }

std::atomic<size_t> image_buffers{0};

constexpr size_t kRecentProblemLines = 8;

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

void log_trampoline(sd_log_level_t level, const char* text, void*) {
    CallCallbacks* call = active_call.load();
    if (call != nullptr && call->aborting.load() && level > SD_LOG_INFO) {
        level = SD_LOG_DEBUG;  // "compute failed" and the like are the expected echo of our own abort
    }
    std::string message = text ? text : "";
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) {
        message.pop_back();
    }
    if (level == SD_LOG_ERROR) {
        recent_problems.push_back(message);
        if (recent_problems.size() > kRecentProblemLines) {
            recent_problems.pop_front();
        }
    }
    if (!python_alive.load() || !Py_IsInitialized()) {
        return;
    }
    py::gil_scoped_acquire gil;
    try {
        py::object logger = py::module_::import("logging").attr("getLogger")("sdcpp_py");
        const int py_level = python_log_level(level);
        if (logger.attr("isEnabledFor")(py_level).cast<bool>()) {
            logger.attr("log")(py_level, "%s", message);
        }
    } catch (py::error_already_set& error) {
        error.discard_as_unraisable("sdcpp_py log callback");
    }
}

void record_failure(CallCallbacks* call) {
    // Rethrown in the caller once the core returns; the next diffusion compute aborts.
    call->error = std::current_exception();
    call->failed.store(true);
}

void progress_trampoline(int step, int steps, float seconds, void*) {
    CallCallbacks* call = current_call;
    if (call == nullptr || call->error || !python_alive.load()) {
        return;
    }
    py::gil_scoped_acquire gil;
    try {
        // Let Python signal handlers run on the main thread at every step (a no-op on other threads).
        if (PyErr_CheckSignals() != 0) {
            throw py::error_already_set();
        }
        if (!call->progress.is_none()) {
            call->progress(step, steps, seconds);
        }
    } catch (py::error_already_set&) {
        record_failure(call);
    }
}

void preview_trampoline(int step, int frame_count, sd_image_t* frames, bool is_noisy, void*) {
    CallCallbacks* call = current_call;
    if (call == nullptr || call->error || frame_count <= 0 || frames == nullptr || !python_alive.load()) {
        return;
    }
    py::gil_scoped_acquire gil;
    try {
        // The core frees the frames when the callback returns: copy them into one (F, H, W, C) array.
        const sd_image_t& first = frames[0];
        py::array_t<uint8_t> stack({static_cast<py::ssize_t>(frame_count), static_cast<py::ssize_t>(first.height),
                                    static_cast<py::ssize_t>(first.width), static_cast<py::ssize_t>(first.channel)});
        const size_t frame_bytes = static_cast<size_t>(first.width) * first.height * first.channel;
        for (int i = 0; i < frame_count; ++i) {
            std::memcpy(stack.mutable_data(i), frames[i].data, frame_bytes);
        }
        call->preview(step, stack, is_noisy);
    } catch (py::error_already_set&) {
        record_failure(call);
    }
}

}  // namespace

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

std::mutex& core_mutex() {
    static std::mutex mutex;
    return mutex;
}

void clear_recent_log() { recent_problems.clear(); }

std::string with_core_log(const std::string& what) {
    const std::string log = recent_log_problems();
    return log.empty() ? what : what + ": " + log;
}

std::string recent_log_problems() {
    std::string joined;
    for (const auto& line : recent_problems) {
        if (!joined.empty()) {
            joined += "\n";
        }
        joined += line;
    }
    return joined;
}

CallbackScope::CallbackScope(CallCallbacks& callbacks) {
    current_call = &callbacks;
    active_call.store(&callbacks);
}

CallbackScope::~CallbackScope() {
    active_call.store(nullptr);
    current_call = nullptr;
}

bool abort_requested_for_active_call() {
    CallCallbacks* call = active_call.load();
    if (call == nullptr) {
        return false;
    }
    // Ctrl-C only stops the main thread's call, not one another thread runs while main waits for the lock.
    const bool stop = call->failed.load() || (call->watches_sigint && sigint_arrived.load()) || call->cancelled();
    if (stop) {
        call->aborting.store(true);
    }
    return stop;
}

InterruptScope::InterruptScope() {
#ifndef _WIN32
    py::module_ threading = py::module_::import("threading");
    if (!threading.attr("current_thread")().is(threading.attr("main_thread")())) {
        return;  // signals reach Python's handlers on the main thread only
    }
    py::module_ signal_module = py::module_::import("signal");
    if (!signal_module.attr("getsignal")(SIGINT).is(signal_module.attr("default_int_handler"))) {
        return;  // a custom handler may not want Ctrl-C to stop the generation
    }
    struct sigaction chained {};
    chained.sa_sigaction = chained_sigint_handler;
    chained.sa_flags     = SA_SIGINFO;
    sigemptyset(&chained.sa_mask);
    sigint_arrived.store(false);
    engaged_ = sigaction(SIGINT, &chained, &python_sigint_action) == 0;
#endif
}

InterruptScope::~InterruptScope() {
#ifndef _WIN32
    if (engaged_) {
        sigaction(SIGINT, &python_sigint_action, nullptr);
        sigint_arrived.store(false);
    }
#endif
}

bool InterruptScope::interrupted() const { return engaged_ && sigint_arrived.load(); }

py::array_t<uint8_t> adopt_image(sd_image_t image) {
    ++image_buffers;
    py::capsule owner(image.data, [](void* data) {
        std::free(data);
        --image_buffers;
    });
    const py::ssize_t height = image.height, width = image.width, channels = image.channel;
    return py::array_t<uint8_t>({height, width, channels}, static_cast<uint8_t*>(image.data), owner);
}

size_t live_image_buffers() { return image_buffers.load(); }

void register_errors(py::module_& m) {
    auto base = py::register_exception<CoreError>(m, "SdcppError", PyExc_RuntimeError);
    py::register_exception<CancelledError>(m, "Cancelled", base);
}

void register_logging(py::module_& m) {
    sd_set_log_callback(log_trampoline, nullptr);
    // Installed for good: with no callback the core prints progress bars on stdout. Calls without a
    // progress callable get nothing.
    sd_set_progress_callback(progress_trampoline, nullptr);
    sd_set_abort_callback(core_abort_callback, nullptr);
    m.def("_shutdown", [] { python_alive.store(false); },
          "Stop routing core callbacks into Python (registered with atexit).");
    m.def("_live_image_buffers", &live_image_buffers,
          "Number of core result buffers still owned by numpy arrays (for leak tests).");
}

}  // namespace sdcpp
