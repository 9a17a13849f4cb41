// Included first by every binding file: pybind11, the core's C API and our shared helpers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#include "stable-diffusion.h"

namespace py = pybind11;

namespace sdcpp {

// Raised as sdcpp_py.SdcppError (a RuntimeError) with the core's own error lines.
class CoreError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Raised as sdcpp_py.Cancelled (a subclass of SdcppError) when Context.cancel() stopped a call.
class CancelledError : public CoreError {
   public:
    using CoreError::CoreError;
};

void register_errors(py::module_& m);
void register_logging(py::module_& m);
void register_info(py::module_& m);
void register_context(py::module_& m);
void register_tools(py::module_& m);
void register_testing(py::module_& m);
void register_testing_core(py::module_& m);

// The test hooks' convolution arguments, checked: f16 kernel bits (OC, IC, KH, KW), f32 image (N, IC, H, W).
struct ConvShape {
    int64_t N, IC, H, W, OC, KH, KW, OH, OW;
};
ConvShape checked_conv_shape(const py::array& kernel_f16_bits, const py::array& image, int stride, int padding,
                             int dilation, int n_threads);

// The core keeps its callbacks and a log buffer in process globals, so one core call runs at a time.
std::mutex& core_mutex();

// Warning and error lines the core logged on this thread since the last clear.
void clear_recent_log();
std::string recent_log_problems();
// `what`, followed by the core's recent error lines.
std::string with_core_log(const std::string& what);

// The callables of the generation in flight on this thread. Installed for the length of one call;
// the core's global C callbacks route here, so nothing Python-side outlives the call.
struct CallCallbacks {
    py::object progress;  // callable(step, steps, seconds) or None
    py::object preview;   // callable(step, frames (F, H, W, C) uint8, is_noisy) or None
    std::exception_ptr error;  // what a callable raised; the generation is then aborted

    // Cancellation: the call is cancelled once the context's epoch moves past the value it started with.
    const std::atomic<uint64_t>* cancel_epoch = nullptr;
    uint64_t start_epoch                      = 0;
    std::atomic<bool> failed{false};    // error is set (readable from any thread)
    std::atomic<bool> aborting{false};  // the core was told to abort this call
    bool watches_sigint = false;        // Ctrl-C stops this call (it runs on the main thread)

    bool cancelled() const { return cancel_epoch != nullptr && cancel_epoch->load() != start_epoch; }
};

// Asked by the (patched) core before and during each diffusion-model compute.
bool abort_requested_for_active_call();

// For the length of one generate call on the main thread: Ctrl-C (SIGINT) aborts the core's compute,
// then Python's own handler raises KeyboardInterrupt. Only engaged while Python's default SIGINT
// handler is in place; a no-op elsewhere.
class InterruptScope {
   public:
    InterruptScope();  // needs the GIL
    ~InterruptScope();
    InterruptScope(const InterruptScope&)            = delete;
    InterruptScope& operator=(const InterruptScope&) = delete;
    bool interrupted() const;  // SIGINT arrived while engaged
    bool engaged() const { return engaged_; }

   private:
    bool engaged_ = false;
};

// Installs the core's (global) preview callback for one call; the core lock must be held.
class PreviewScope {
   public:
    PreviewScope(bool enabled, int mode, int interval, bool noisy);
    ~PreviewScope();
    PreviewScope(const PreviewScope&)            = delete;
    PreviewScope& operator=(const PreviewScope&) = delete;

   private:
    bool enabled_;
};

class CallbackScope {
   public:
    explicit CallbackScope(CallCallbacks& callbacks);
    ~CallbackScope();
    CallbackScope(const CallbackScope&)            = delete;
    CallbackScope& operator=(const CallbackScope&) = delete;
};

// A (H, W, C) uint8 array that owns the core's malloc'ed pixels through a capsule: no copy.
py::array_t<uint8_t> adopt_image(sd_image_t image);
size_t live_image_buffers();

}  // namespace sdcpp
