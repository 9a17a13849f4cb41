// The core's context-free tools: the ESRGAN upscaler, the Canny preprocessor and the GGUF converter.
#include "common.hpp"

#include <cstring>
#include <memory>
#include <regex>

#include "ggml.h"

namespace sdcpp {

namespace {

struct UpscalerDeleter {
    void operator()(upscaler_ctx_t* ctx) const { free_upscaler_ctx(ctx); }
};

sd_image_t borrow(const py::array_t<uint8_t, py::array::c_style>& image) {
    if (image.ndim() != 3) {
        throw std::invalid_argument("expected a (H, W, C) uint8 array");
    }
    return {static_cast<uint32_t>(image.shape(1)), static_cast<uint32_t>(image.shape(0)),
            static_cast<uint32_t>(image.shape(2)), const_cast<uint8_t*>(image.data())};
}

py::array_t<uint8_t, py::array::c_style> copy_of(const py::array_t<uint8_t, py::array::c_style>& image) {
    py::array_t<uint8_t, py::array::c_style> copy(std::vector<py::ssize_t>(image.shape(), image.shape() + image.ndim()));
    std::memcpy(copy.mutable_data(), image.data(), image.nbytes());
    return copy;
}

// What a loaded upscaler shares with the core calls queued for it (a free queued by its destructor).
struct LoadedUpscaler {
    std::unique_ptr<upscaler_ctx_t, UpscalerDeleter> ctx;  // touched only on the core thread
};

class NativeUpscaler {
   public:
    NativeUpscaler(const std::string& path, bool offload_params_to_cpu, bool direct, int n_threads, int tile_size)
        : state_(std::make_shared<LoadedUpscaler>()) {
        auto state = state_;
        auto load  = std::make_shared<CoreCall>("loading an Upscaler", [&, state] {
            state->ctx.reset(new_upscaler_ctx(path.c_str(), offload_params_to_cpu, direct, n_threads, tile_size));
            if (state->ctx != nullptr) {
                factor_ = get_upscale_factor(state->ctx.get());  // constant: no core call needed later
            }
        });
        run_on_core_thread(load);
        if (load->python_error || load->core_exception) {
            free_detached();
            load->raise_errors();
        }
        if (state_->ctx == nullptr) {
            throw CoreError(load->with_core_log("the core could not load the upscaler"));
        }
    }

    int factor() const {
        require_open();
        return factor_;
    }

    py::array_t<uint8_t> upscale(const py::array_t<uint8_t, py::array::c_style>& image, uint32_t factor) {
        require_open();
        // A private copy: the core reads it on its thread while Python may write the array.
        const auto input    = copy_of(image);
        const sd_image_t view = borrow(input);
        sd_image_t result{};
        bool was_closed = false;
        auto state      = state_;
        auto call       = std::make_shared<CoreCall>("upscaling", [&, state] {
            if (state->ctx == nullptr) {
                was_closed = true;  // closed by another thread while this call waited
                return;
            }
            result = ::upscale(state->ctx.get(), view, factor);
        });
        call->cancel_epoch = &cancel_epoch_;
        call->start_epoch  = cancel_epoch_.load();  // a cancel() from now on stops this call (patch 0022)
        run_on_core_thread(call);
        if (result.data != nullptr) {
            auto owned = adopt_image(result);  // owned before any error is raised: nothing leaks
            call->raise_errors();
            return owned;
        }
        call->raise_errors();
        if (was_closed) {
            throw std::invalid_argument("this Upscaler is closed");
        }
        throw CoreError(call->with_core_log("upscaling failed"));
    }

    // Stops the upscales in flight or queued on this upscaler (they raise Cancelled) and frees it, waiting as
    // free_on_core_thread says.
    void close(bool wait) {
        if (closed_.exchange(true)) {
            return;
        }
        cancel_epoch_.fetch_add(1);
        free_on_core_thread(state_, "closing an Upscaler", wait);
    }

    // Any thread, no lock: upscales in flight or waiting on this upscaler stop; later calls are unaffected.
    void cancel() { cancel_epoch_.fetch_add(1); }

    bool closed() const { return closed_.load(); }

    ~NativeUpscaler() {
        if (!closed_.exchange(true)) {
            free_detached();  // never blocks
        }
    }

   private:
    void free_detached() { free_on_core_thread(state_, "freeing an Upscaler", false); }

    void require_open() const {
        if (closed_.load()) {
            throw std::invalid_argument("this Upscaler is closed");
        }
    }

    std::shared_ptr<LoadedUpscaler> state_;
    std::atomic<bool> closed_{false};
    std::atomic<uint64_t> cancel_epoch_{0};
    int factor_ = 0;
};

}  // namespace

void register_tools(py::module_& m) {
    py::class_<NativeUpscaler>(m, "NativeUpscaler", "One loaded ESRGAN upscaler. Use sdcpp_py.Upscaler.")
        .def(py::init<const std::string&, bool, bool, int, int>(), py::arg("path"), py::arg("offload_params_to_cpu"),
             py::arg("direct"), py::arg("n_threads"), py::arg("tile_size"))
        .def("factor", &NativeUpscaler::factor)
        .def("upscale", &NativeUpscaler::upscale, py::arg("image"), py::arg("factor"))
        .def("cancel", &NativeUpscaler::cancel,
             "Stop the upscales in flight or waiting on this upscaler (they raise Cancelled); thread-safe.")
        .def("close", &NativeUpscaler::close, py::arg("wait") = true)
        .def_property_readonly("closed", &NativeUpscaler::closed);

    m.def(
        "preprocess_canny",
        [](py::array_t<uint8_t, py::array::c_style> image, float high_threshold, float low_threshold, float weak,
           float strong, bool inverse) {
            // The core edits the pixels in place: work on a copy the caller cannot see.
            auto result = copy_of(image);
            const sd_image_t view = borrow(result);
            // Plain image code with no global state: runs on this thread, also from inside a callback.
            bool ok;
            {
                GilRelease release;
                ok = ::preprocess_canny(view, high_threshold, low_threshold, weak, strong, inverse);
            }
            if (!ok) {
                throw CoreError("canny preprocessing failed");
            }
            return result;
        },
        py::arg("image"), py::arg("high_threshold"), py::arg("low_threshold"), py::arg("weak"), py::arg("strong"),
        py::arg("inverse"));

    m.def(
        "convert",
        [](const std::string& input, const std::string& vae, const std::string& output, int weight_type,
           const std::string& tensor_type_rules, bool convert_name, py::object progress) {
            // The core reports tensors loaded through its progress callback; it has no way to stop a
            // conversion, so a callback's exception (or Ctrl-C) is raised once the conversion returns.
            bool ok   = false;
            auto call = std::make_shared<CoreCall>("convert", [&] {
                ok = ::convert(input.c_str(), vae.empty() ? nullptr : vae.c_str(), output.c_str(),
                               static_cast<sd_type_t>(weight_type),
                               tensor_type_rules.c_str(), convert_name);  // the core builds a std::string from it
            });
            run_on_core_thread(call, progress);
            call->raise_errors();
            if (!ok) {
                throw CoreError(call->with_core_log("conversion failed"));
            }
        },
        py::arg("input"), py::arg("vae"), py::arg("output"), py::arg("weight_type"), py::arg("tensor_type_rules"),
        py::arg("convert_name"), py::arg("progress") = py::none());

    m.def(
        "regex_error",
        [](const std::string& pattern) -> py::object {
            // The core compiles tensor_type_rules patterns with std::regex (ECMAScript) and does not catch
            // regex_error: ask the same library up front. On the core thread: compiling recurses per character.
            std::string error;
            auto call = std::make_shared<CoreCall>("checking a regular expression", [&] {
                try {
                    std::regex compiled(pattern);
                } catch (const std::regex_error& e) {
                    error = e.what();
                }
            });
            run_on_core_thread(call);
            call->raise_errors();
            return error.empty() ? py::object(py::none()) : py::object(py::str(error));
        },
        py::arg("pattern"), "Why std::regex (as the core uses it) refuses `pattern`, or None if it compiles.");

    // The type names parse_tensor_type_rules (model.cpp) accepts: "f32" and every ggml type that converts
    // from float; any other name the core skips with a warning.
    py::list rule_types;
    rule_types.append("f32");
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const auto* traits = ggml_get_type_traits(static_cast<ggml_type>(i));
        if (traits->to_float != nullptr && traits->type_size != 0) {
            rule_types.append(traits->type_name);
        }
    }
    m.attr("TENSOR_RULE_TYPES") = rule_types;

    // sd_cache_mode_t has no name function in the core; these are sd-cli's --cache-mode spellings.
    py::dict cache_modes;
    cache_modes["disabled"]   = static_cast<int>(SD_CACHE_DISABLED);
    cache_modes["easycache"]  = static_cast<int>(SD_CACHE_EASYCACHE);
    cache_modes["ucache"]     = static_cast<int>(SD_CACHE_UCACHE);
    cache_modes["dbcache"]    = static_cast<int>(SD_CACHE_DBCACHE);
    cache_modes["taylorseer"] = static_cast<int>(SD_CACHE_TAYLORSEER);
    cache_modes["cache-dit"]  = static_cast<int>(SD_CACHE_CACHE_DIT);
    cache_modes["spectrum"]   = static_cast<int>(SD_CACHE_SPECTRUM);
    m.attr("CACHE_MODES") = cache_modes;
}

}  // namespace sdcpp
