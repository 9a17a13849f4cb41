// The native Context: owns one sd_ctx_t, loads and generates with the GIL released.
#include "common.hpp"

#include <cmath>
#include <memory>
#include <vector>

namespace sdcpp {

namespace {

// sd_ctx_params_t with owned strings. Scalars start at the core's sd_ctx_params_init values,
// so the Python defaults are the core's defaults by construction.
struct ContextParams {
    std::string model, clip_l, clip_g, clip_vision, t5xxl, llm, llm_vision, diffusion_model,
        high_noise_diffusion_model, vae, taesd, control_net, photo_maker, tensor_type_rules;
    std::vector<std::pair<std::string, std::string>> embeddings;  // (name, path)
    sd_ctx_params_t scalars{};

    ContextParams() {
        sd_ctx_params_init(&scalars);
        // A Python context generates many times: keep weights after the first image.
        scalars.free_params_immediately = false;
    }
};

// The generation fields of sd_img_gen_params_t that own memory, plus the plain struct.
struct ImageGenParams {
    std::string prompt, negative_prompt;
    std::vector<int> skip_layers;
    std::vector<float> custom_sigmas;
    sd_img_gen_params_t plain{};

    ImageGenParams() { sd_img_gen_params_init(&plain); }
};

struct CtxDeleter {
    void operator()(sd_ctx_t* ctx) const { free_sd_ctx(ctx); }
};

const char* c_str_or_null(const std::string& s) { return s.empty() ? nullptr : s.c_str(); }

std::string with_core_log(const std::string& what) {
    const std::string log = recent_log_problems();
    return log.empty() ? what : what + ": " + log;
}

class NativeContext {
   public:
    explicit NativeContext(const ContextParams& params) : params_(params) {
        std::vector<sd_embedding_t> embeddings;
        for (const auto& [name, path] : params_.embeddings) {
            embeddings.push_back({name.c_str(), path.c_str()});
        }
        sd_ctx_params_t c = params_.scalars;
        c.model_path                      = c_str_or_null(params_.model);
        c.clip_l_path                     = c_str_or_null(params_.clip_l);
        c.clip_g_path                     = c_str_or_null(params_.clip_g);
        c.clip_vision_path                = c_str_or_null(params_.clip_vision);
        c.t5xxl_path                      = c_str_or_null(params_.t5xxl);
        c.llm_path                        = c_str_or_null(params_.llm);
        c.llm_vision_path                 = c_str_or_null(params_.llm_vision);
        c.diffusion_model_path            = c_str_or_null(params_.diffusion_model);
        c.high_noise_diffusion_model_path = c_str_or_null(params_.high_noise_diffusion_model);
        c.vae_path                        = c_str_or_null(params_.vae);
        c.taesd_path                      = c_str_or_null(params_.taesd);
        c.control_net_path                = c_str_or_null(params_.control_net);
        c.photo_maker_path                = c_str_or_null(params_.photo_maker);
        c.tensor_type_rules               = c_str_or_null(params_.tensor_type_rules);
        c.embeddings                      = embeddings.empty() ? nullptr : embeddings.data();
        c.embedding_count                 = static_cast<uint32_t>(embeddings.size());

        sd_ctx_t* raw = nullptr;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> core_lock(core_mutex());
            clear_recent_log();
            raw = new_sd_ctx(&c);
        }
        if (raw == nullptr) {
            throw CoreError(with_core_log("the core could not build a context from these components"));
        }
        ctx_.reset(raw);
    }

    py::list generate_image(const ImageGenParams& request, py::object progress, py::object preview,
                            int preview_mode, int preview_interval, bool preview_noisy) {
        require_open();
        sd_img_gen_params_t c = request.plain;
        c.prompt          = request.prompt.c_str();
        c.negative_prompt = request.negative_prompt.c_str();
        c.sample_params.guidance.slg.layers =
            request.skip_layers.empty() ? nullptr : const_cast<int*>(request.skip_layers.data());
        c.sample_params.guidance.slg.layer_count = request.skip_layers.size();
        c.sample_params.custom_sigmas =
            request.custom_sigmas.empty() ? nullptr : const_cast<float*>(request.custom_sigmas.data());
        c.sample_params.custom_sigmas_count = static_cast<int>(request.custom_sigmas.size());

        // As sd-cli does: with no mask given, an all-white mask of the output size.
        std::vector<uint8_t> full_mask;
        if (c.mask_image.data == nullptr) {
            full_mask.assign(static_cast<size_t>(c.width) * c.height, 255);
            c.mask_image = {static_cast<uint32_t>(c.width), static_cast<uint32_t>(c.height), 1, full_mask.data()};
        }

        const bool wants_preview = !preview.is_none();
        CallCallbacks callbacks;
        callbacks.progress     = std::move(progress);
        callbacks.preview      = std::move(preview);
        callbacks.cancel_epoch = &cancel_epoch_;
        callbacks.start_epoch  = cancel_epoch_.load();  // a cancel() from now on stops this call
        InterruptScope interrupt;
        sd_image_t* results = nullptr;
        bool was_closed     = false;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> context_lock(mutex_);
            if (ctx_ == nullptr) {
                was_closed = true;  // closed by another thread while this call waited
            } else {
                std::lock_guard<std::mutex> core_lock(core_mutex());
                CallbackScope scope(callbacks);
                PreviewScope preview_scope(wants_preview, preview_mode, preview_interval, preview_noisy);
                clear_recent_log();
                results = ::generate_image(ctx_.get(), &c);
            }
        }
        if (was_closed) {
            throw std::invalid_argument("this Context is closed");
        }
        // Own every buffer before anything can throw.
        py::list images;
        if (results != nullptr) {
            for (int i = 0; i < c.batch_count; ++i) {
                if (results[i].data != nullptr) {
                    images.append(adopt_image(results[i]));
                }
            }
            std::free(results);
        }
        if (callbacks.error) {
            std::rethrow_exception(callbacks.error);  // unchanged, traceback included
        }
        if (interrupt.interrupted()) {
            if (PyErr_CheckSignals() == 0) {  // normally raises KeyboardInterrupt itself
                PyErr_SetNone(PyExc_KeyboardInterrupt);
            }
            throw py::error_already_set();
        }
        if (callbacks.cancelled()) {
            throw CancelledError("the generation was cancelled by Context.cancel()");
        }
        if (results == nullptr || images.size() == 0) {
            throw CoreError(with_core_log("generation failed"));
        }
        return images;
    }

    int default_sample_method() { return static_cast<int>(sd_get_default_sample_method(require_open())); }

    int default_scheduler(int sample_method) {
        return static_cast<int>(sd_get_default_scheduler(require_open(), static_cast<sample_method_t>(sample_method)));
    }

    bool supports_image_generation() { return sd_ctx_supports_image_generation(require_open()); }
    bool supports_video_generation() { return sd_ctx_supports_video_generation(require_open()); }

    void close() {
        std::unique_ptr<sd_ctx_t, CtxDeleter> doomed;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> context_lock(mutex_);
            doomed = std::move(ctx_);
            std::lock_guard<std::mutex> core_lock(core_mutex());
            doomed.reset();
        }
    }

    bool closed() const { return ctx_ == nullptr; }

    // Any thread, no lock: calls in flight or waiting on this context stop; later calls are unaffected.
    void cancel() { cancel_epoch_.fetch_add(1); }

    ~NativeContext() {
        if (ctx_ != nullptr) {
            // Release the GIL: a generation on another thread may hold the core lock and want the GIL.
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> core_lock(core_mutex());
            ctx_.reset();
        }
    }

   private:
    sd_ctx_t* require_open() {
        if (ctx_ == nullptr) {
            throw std::invalid_argument("this Context is closed");
        }
        return ctx_.get();
    }

    ContextParams params_;  // owns the strings handed to new_sd_ctx for as long as the context lives
    std::unique_ptr<sd_ctx_t, CtxDeleter> ctx_;
    std::mutex mutex_;
    std::atomic<uint64_t> cancel_epoch_{0};
};

}  // namespace

void register_context(py::module_& m) {
    py::class_<ContextParams> ctx_params(m, "ContextParams",
                                         "Plain fields of sd_ctx_params_t, initialised by sd_ctx_params_init.");
    ctx_params.def(py::init<>());
#define SDCPP_STRING_FIELD(name) ctx_params.def_readwrite(#name, &ContextParams::name)
    SDCPP_STRING_FIELD(model);
    SDCPP_STRING_FIELD(clip_l);
    SDCPP_STRING_FIELD(clip_g);
    SDCPP_STRING_FIELD(clip_vision);
    SDCPP_STRING_FIELD(t5xxl);
    SDCPP_STRING_FIELD(llm);
    SDCPP_STRING_FIELD(llm_vision);
    SDCPP_STRING_FIELD(diffusion_model);
    SDCPP_STRING_FIELD(high_noise_diffusion_model);
    SDCPP_STRING_FIELD(vae);
    SDCPP_STRING_FIELD(taesd);
    SDCPP_STRING_FIELD(control_net);
    SDCPP_STRING_FIELD(photo_maker);
    SDCPP_STRING_FIELD(tensor_type_rules);
    SDCPP_STRING_FIELD(embeddings);
#undef SDCPP_STRING_FIELD
#define SDCPP_SCALAR_FIELD(py_name, field)                                                         \
    ctx_params.def_property(                                                                       \
        py_name, [](const ContextParams& p) { return p.scalars.field; },                           \
        [](ContextParams& p, decltype(sd_ctx_params_t::field) v) { p.scalars.field = v; })
#define SDCPP_ENUM_FIELD(py_name, field, enum_type)                                                \
    ctx_params.def_property(                                                                       \
        py_name, [](const ContextParams& p) { return static_cast<int>(p.scalars.field); },         \
        [](ContextParams& p, int v) { p.scalars.field = static_cast<enum_type>(v); })
    SDCPP_SCALAR_FIELD("vae_decode_only", vae_decode_only);
    SDCPP_SCALAR_FIELD("free_params_immediately", free_params_immediately);
    SDCPP_SCALAR_FIELD("n_threads", n_threads);
    SDCPP_ENUM_FIELD("weight_type", wtype, sd_type_t);
    SDCPP_ENUM_FIELD("rng", rng_type, rng_type_t);
    SDCPP_ENUM_FIELD("sampler_rng", sampler_rng_type, rng_type_t);
    SDCPP_ENUM_FIELD("prediction", prediction, prediction_t);
    SDCPP_ENUM_FIELD("lora_apply_mode", lora_apply_mode, lora_apply_mode_t);
    SDCPP_SCALAR_FIELD("offload_params_to_cpu", offload_params_to_cpu);
    SDCPP_SCALAR_FIELD("mmap", enable_mmap);
    SDCPP_SCALAR_FIELD("keep_clip_on_cpu", keep_clip_on_cpu);
    SDCPP_SCALAR_FIELD("keep_control_net_on_cpu", keep_control_net_on_cpu);
    SDCPP_SCALAR_FIELD("keep_vae_on_cpu", keep_vae_on_cpu);
    SDCPP_SCALAR_FIELD("flash_attn", flash_attn);
    SDCPP_SCALAR_FIELD("diffusion_flash_attn", diffusion_flash_attn);
    SDCPP_SCALAR_FIELD("tae_preview_only", tae_preview_only);
    SDCPP_SCALAR_FIELD("diffusion_conv_direct", diffusion_conv_direct);
    SDCPP_SCALAR_FIELD("vae_conv_direct", vae_conv_direct);
    SDCPP_SCALAR_FIELD("circular_x", circular_x);
    SDCPP_SCALAR_FIELD("circular_y", circular_y);
    SDCPP_SCALAR_FIELD("force_sdxl_vae_conv_scale", force_sdxl_vae_conv_scale);
    SDCPP_SCALAR_FIELD("chroma_use_dit_mask", chroma_use_dit_mask);
    SDCPP_SCALAR_FIELD("chroma_use_t5_mask", chroma_use_t5_mask);
    SDCPP_SCALAR_FIELD("chroma_t5_mask_pad", chroma_t5_mask_pad);
    SDCPP_SCALAR_FIELD("qwen_image_zero_cond_t", qwen_image_zero_cond_t);
    SDCPP_SCALAR_FIELD("max_vram", max_vram);
#undef SDCPP_SCALAR_FIELD
#undef SDCPP_ENUM_FIELD

    py::class_<ImageGenParams> gen(m, "ImageGenParams",
                                   "Fields of sd_img_gen_params_t, initialised by sd_img_gen_params_init.");
    gen.def(py::init<>());
    gen.def_readwrite("prompt", &ImageGenParams::prompt);
    gen.def_readwrite("negative_prompt", &ImageGenParams::negative_prompt);
    gen.def_readwrite("skip_layers", &ImageGenParams::skip_layers);
    gen.def_readwrite("custom_sigmas", &ImageGenParams::custom_sigmas);
#define SDCPP_GEN_FIELD(py_name, expr)                                                             \
    gen.def_property(                                                                              \
        py_name, [](const ImageGenParams& p) { return p.plain.expr; },                             \
        [](ImageGenParams& p, decltype(sd_img_gen_params_t{}.expr) v) { p.plain.expr = v; })
#define SDCPP_GEN_ENUM(py_name, expr, enum_type)                                                   \
    gen.def_property(                                                                              \
        py_name, [](const ImageGenParams& p) { return static_cast<int>(p.plain.expr); },           \
        [](ImageGenParams& p, int v) { p.plain.expr = static_cast<enum_type>(v); })
    SDCPP_GEN_FIELD("clip_skip", clip_skip);
    SDCPP_GEN_FIELD("width", width);
    SDCPP_GEN_FIELD("height", height);
    SDCPP_GEN_FIELD("strength", strength);
    SDCPP_GEN_FIELD("seed", seed);
    SDCPP_GEN_FIELD("batch_count", batch_count);
    SDCPP_GEN_FIELD("cfg_scale", sample_params.guidance.txt_cfg);
    SDCPP_GEN_FIELD("img_cfg_scale", sample_params.guidance.img_cfg);
    SDCPP_GEN_FIELD("guidance", sample_params.guidance.distilled_guidance);
    SDCPP_GEN_FIELD("slg_start", sample_params.guidance.slg.layer_start);
    SDCPP_GEN_FIELD("slg_end", sample_params.guidance.slg.layer_end);
    SDCPP_GEN_FIELD("slg_scale", sample_params.guidance.slg.scale);
    SDCPP_GEN_ENUM("sampler", sample_params.sample_method, sample_method_t);
    SDCPP_GEN_ENUM("scheduler", sample_params.scheduler, scheduler_t);
    SDCPP_GEN_FIELD("steps", sample_params.sample_steps);
    SDCPP_GEN_FIELD("eta", sample_params.eta);
    SDCPP_GEN_FIELD("shifted_timestep", sample_params.shifted_timestep);
    SDCPP_GEN_FIELD("flow_shift", sample_params.flow_shift);
    SDCPP_GEN_FIELD("vae_tiling", vae_tiling_params.enabled);
    SDCPP_GEN_FIELD("vae_tile_size_x", vae_tiling_params.tile_size_x);
    SDCPP_GEN_FIELD("vae_tile_size_y", vae_tiling_params.tile_size_y);
    SDCPP_GEN_FIELD("vae_tile_overlap", vae_tiling_params.target_overlap);
#undef SDCPP_GEN_FIELD
#undef SDCPP_GEN_ENUM

    py::class_<NativeContext>(m, "NativeContext", "One loaded sd_ctx_t. Use sdcpp_py.Context.")
        .def(py::init<const ContextParams&>(), py::arg("params"))
        .def("generate_image", &NativeContext::generate_image, py::arg("params"), py::arg("progress") = py::none(),
             py::arg("preview") = py::none(), py::arg("preview_mode") = static_cast<int>(PREVIEW_PROJ),
             py::arg("preview_interval") = 1, py::arg("preview_noisy") = false,
             "Run generate_image with the GIL released; returns a list of (H, W, C) uint8 arrays that own the "
             "core's buffers.\n\nRaises:\n    SdcppError: the core failed, with its error lines.")
        .def("default_sample_method", &NativeContext::default_sample_method)
        .def("default_scheduler", &NativeContext::default_scheduler, py::arg("sample_method"))
        .def("supports_image_generation", &NativeContext::supports_image_generation)
        .def("supports_video_generation", &NativeContext::supports_video_generation)
        .def("cancel", &NativeContext::cancel,
             "Stop the calls in flight or waiting on this context (they raise Cancelled); thread-safe.")
        .def("close", &NativeContext::close, "Free the core context (idempotent).")
        .def_property_readonly("closed", &NativeContext::closed);
}

}  // namespace sdcpp
