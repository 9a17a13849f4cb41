// The core's context-free tools: the ESRGAN upscaler, the Canny preprocessor and the GGUF converter.
#include "common.hpp"

#include <cstring>
#include <memory>

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

class NativeUpscaler {
   public:
    NativeUpscaler(const std::string& path, bool offload_params_to_cpu, bool direct, int n_threads, int tile_size) {
        upscaler_ctx_t* raw = nullptr;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> core_lock(core_mutex());
            clear_recent_log();
            raw = new_upscaler_ctx(path.c_str(), offload_params_to_cpu, direct, n_threads, tile_size);
        }
        if (raw == nullptr) {
            throw CoreError(with_core_log("the core could not load the upscaler"));
        }
        ctx_.reset(raw);
    }

    int factor() { return get_upscale_factor(require_open()); }

    py::array_t<uint8_t> upscale(const py::array_t<uint8_t, py::array::c_style>& image, uint32_t factor) {
        upscaler_ctx_t* ctx = require_open();
        // A private copy: the core reads it with the GIL released while Python may write the array.
        const auto input = copy_of(image);
        const sd_image_t view = borrow(input);
        sd_image_t result{};
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            std::lock_guard<std::mutex> core_lock(core_mutex());
            clear_recent_log();
            result = ::upscale(ctx, view, factor);
        }
        if (result.data == nullptr) {
            throw CoreError(with_core_log("upscaling failed"));
        }
        return adopt_image(result);
    }

    void close() {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        std::lock_guard<std::mutex> core_lock(core_mutex());
        ctx_.reset();
    }

    bool closed() const { return ctx_ == nullptr; }

    ~NativeUpscaler() {
        if (ctx_ != nullptr) {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> core_lock(core_mutex());
            ctx_.reset();
        }
    }

   private:
    upscaler_ctx_t* require_open() {
        if (ctx_ == nullptr) {
            throw std::invalid_argument("this Upscaler is closed");
        }
        return ctx_.get();
    }

    std::unique_ptr<upscaler_ctx_t, UpscalerDeleter> ctx_;
    std::mutex mutex_;
};

}  // namespace

void register_tools(py::module_& m) {
    py::class_<NativeUpscaler>(m, "NativeUpscaler", "One loaded ESRGAN upscaler. Use sdcpp_py.Upscaler.")
        .def(py::init<const std::string&, bool, bool, int, int>(), py::arg("path"), py::arg("offload_params_to_cpu"),
             py::arg("direct"), py::arg("n_threads"), py::arg("tile_size"))
        .def("factor", &NativeUpscaler::factor)
        .def("upscale", &NativeUpscaler::upscale, py::arg("image"), py::arg("factor"))
        .def("close", &NativeUpscaler::close)
        .def_property_readonly("closed", &NativeUpscaler::closed);

    m.def(
        "preprocess_canny",
        [](py::array_t<uint8_t, py::array::c_style> image, float high_threshold, float low_threshold, float weak,
           float strong, bool inverse) {
            // The core edits the pixels in place: work on a copy the caller cannot see.
            auto result = copy_of(image);
            const sd_image_t view = borrow(result);
            bool ok;
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> core_lock(core_mutex());
                clear_recent_log();
                ok = ::preprocess_canny(view, high_threshold, low_threshold, weak, strong, inverse);
            }
            if (!ok) {
                throw CoreError(with_core_log("canny preprocessing failed"));
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
            CallCallbacks callbacks;
            callbacks.progress = std::move(progress);
            bool ok;
            {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> core_lock(core_mutex());
                CallbackScope scope(callbacks);
                clear_recent_log();
                ok = ::convert(input.c_str(), vae.empty() ? nullptr : vae.c_str(), output.c_str(),
                               static_cast<sd_type_t>(weight_type),
                               tensor_type_rules.c_str(), convert_name);  // the core builds a std::string from it
            }
            if (callbacks.error) {
                std::rethrow_exception(callbacks.error);
            }
            if (!ok) {
                throw CoreError(with_core_log("conversion failed"));
            }
        },
        py::arg("input"), py::arg("vae"), py::arg("output"), py::arg("weight_type"), py::arg("tensor_type_rules"),
        py::arg("convert_name"), py::arg("progress") = py::none());

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
