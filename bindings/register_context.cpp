// The native Context: owns one sd_ctx_t, loads and generates with the GIL released.
#include "common.hpp"

#include <cmath>
#include <cstring>
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

// Pixels copied from a (H, W, C) uint8 array: the core reads them with the GIL released.
struct OwnedImage {
    std::vector<uint8_t> pixels;
    uint32_t width = 0, height = 0, channels = 0;

    OwnedImage() = default;
    explicit OwnedImage(const py::array_t<uint8_t, py::array::c_style>& array) {
        if (array.ndim() != 3) {
            throw std::invalid_argument("expected a (H, W, C) uint8 array");
        }
        height   = static_cast<uint32_t>(array.shape(0));
        width    = static_cast<uint32_t>(array.shape(1));
        channels = static_cast<uint32_t>(array.shape(2));
        pixels.assign(array.data(), array.data() + array.size());
    }
    sd_image_t view() {
        return {width, height, channels, pixels.empty() ? nullptr : pixels.data()};
    }
    bool empty() const { return pixels.empty(); }
};

std::vector<OwnedImage> owned_images(const std::vector<py::array_t<uint8_t, py::array::c_style>>& arrays) {
    std::vector<OwnedImage> images;
    for (const auto& array : arrays) {
        images.emplace_back(array);
    }
    return images;
}

std::vector<sd_image_t> views_of(std::vector<OwnedImage>& images) {
    std::vector<sd_image_t> views;
    for (auto& image : images) {
        views.push_back(image.view());
    }
    return views;
}

struct LoraSpec {
    std::string path;
    float multiplier  = 1.0f;
    bool is_high_noise = false;
};

std::vector<sd_lora_t> lora_views(const std::vector<LoraSpec>& loras) {
    std::vector<sd_lora_t> views;
    for (const auto& lora : loras) {
        views.push_back({lora.is_high_noise, lora.multiplier, lora.path.c_str()});
    }
    return views;
}

// The generation fields of sd_img_gen_params_t that own memory, plus the plain struct.
struct ImageGenParams {
    std::string prompt, negative_prompt, pm_id_embed_path, hires_model_path, cache_scm_mask;
    std::vector<int> skip_layers;
    std::vector<float> custom_sigmas;
    std::vector<LoraSpec> loras;
    OwnedImage init_image, mask_image, control_image;
    std::vector<OwnedImage> ref_images, pm_id_images;
    sd_img_gen_params_t plain{};

    ImageGenParams() { sd_img_gen_params_init(&plain); }
};

// The same for sd_vid_gen_params_t.
struct VideoGenParams {
    std::string prompt, negative_prompt, cache_scm_mask;
    std::vector<int> skip_layers, high_noise_skip_layers;
    std::vector<float> custom_sigmas, high_noise_custom_sigmas;
    std::vector<LoraSpec> loras;
    OwnedImage init_image, end_image;
    std::vector<OwnedImage> control_frames;
    sd_vid_gen_params_t plain{};

    VideoGenParams() { sd_vid_gen_params_init(&plain); }
};

void point_sample_params(sd_sample_params_t& sample, std::vector<int>& skip_layers, std::vector<float>& sigmas) {
    sample.guidance.slg.layers      = skip_layers.empty() ? nullptr : skip_layers.data();
    sample.guidance.slg.layer_count = skip_layers.size();
    sample.custom_sigmas            = sigmas.empty() ? nullptr : sigmas.data();
    sample.custom_sigmas_count      = static_cast<int>(sigmas.size());
}

struct CtxDeleter {
    void operator()(sd_ctx_t* ctx) const { free_sd_ctx(ctx); }
};

const char* c_str_or_null(const std::string& s) { return s.empty() ? nullptr : s.c_str(); }


// Refuses text the core would misread: it takes C strings (a NUL ends them early) and parses prompts with
// a recursion per byte (bounded by the core thread's stack).
void check_prompt(const char* argument, const std::string& text) {
    if (text.find('\0') != std::string::npos) {
        throw std::invalid_argument(std::string(argument) + " contains a NUL character, which would end it early");
    }
    if (text.size() > max_prompt_bytes()) {
        throw std::invalid_argument(std::string(argument) + " is " + std::to_string(text.size()) +
                                    " bytes of UTF-8; the limit is " + std::to_string(max_prompt_bytes()));
    }
}

// The core only warns when it cannot load a file it was given ("loading clip_l from '...' failed", "load lora
// tensors from ... failed") and goes on without it. The failure lines with the reasons logged before them, or "".
std::string failed_loads(const CoreCall& call) {
    std::string reasons, failed;
    for (const std::string& line : call.warning_lines()) {
        const bool is_failure = line.find("- load") != std::string::npos && line.size() >= 6 &&
                                line.compare(line.size() - 6, 6, "failed") == 0;
        if (is_failure) {
            failed += (failed.empty() ? "" : "; ") + reasons + line;
            reasons.clear();
        } else if (line.find("unknown format") != std::string::npos || line.find("unsupported") != std::string::npos) {
            reasons += line + "; ";
        }
    }
    return failed;
}

// What a loaded context shares with the core calls queued for it: a free queued by __del__ may run after the
// Python object is gone.
struct LoadedContext {
    ContextParams params;  // owns the strings handed to new_sd_ctx for as long as the context lives
    std::unique_ptr<sd_ctx_t, CtxDeleter> ctx;  // touched only on the core thread
};

class NativeContext {
   public:
    explicit NativeContext(const ContextParams& params) : state_(std::make_shared<LoadedContext>()) {
        state_->params = params;
        const ContextParams& p = state_->params;
        check_prompt("tensor_type_rules", p.tensor_type_rules);
        std::vector<sd_embedding_t> embeddings;
        for (const auto& [name, path] : p.embeddings) {
            embeddings.push_back({name.c_str(), path.c_str()});
        }
        sd_ctx_params_t c = p.scalars;
        c.model_path                      = c_str_or_null(p.model);
        c.clip_l_path                     = c_str_or_null(p.clip_l);
        c.clip_g_path                     = c_str_or_null(p.clip_g);
        c.clip_vision_path                = c_str_or_null(p.clip_vision);
        c.t5xxl_path                      = c_str_or_null(p.t5xxl);
        c.llm_path                        = c_str_or_null(p.llm);
        c.llm_vision_path                 = c_str_or_null(p.llm_vision);
        c.diffusion_model_path            = c_str_or_null(p.diffusion_model);
        c.high_noise_diffusion_model_path = c_str_or_null(p.high_noise_diffusion_model);
        c.vae_path                        = c_str_or_null(p.vae);
        c.taesd_path                      = c_str_or_null(p.taesd);
        c.control_net_path                = c_str_or_null(p.control_net);
        c.photo_maker_path                = c_str_or_null(p.photo_maker);
        c.tensor_type_rules               = c_str_or_null(p.tensor_type_rules);
        c.embeddings                      = embeddings.empty() ? nullptr : embeddings.data();
        c.embedding_count                 = static_cast<uint32_t>(embeddings.size());

        auto state = state_;
        auto load  = std::make_shared<CoreCall>("loading a Context", [&, state] {
            state->ctx.reset(new_sd_ctx(&c));
            if (state->ctx != nullptr) {
                // Constant per model: asked once here, so later queries need no core call.
                sd_ctx_t* ctx          = state->ctx.get();
                default_sample_method_ = static_cast<int>(sd_get_default_sample_method(ctx));
                for (int method = 0; method < SAMPLE_METHOD_COUNT; ++method) {
                    default_schedulers_.push_back(
                        static_cast<int>(sd_get_default_scheduler(ctx, static_cast<sample_method_t>(method))));
                }
                supports_image_ = sd_ctx_supports_image_generation(ctx);
                supports_video_ = sd_ctx_supports_video_generation(ctx);
            }
        });
        run_on_core_thread(load);
        if (load->python_error || load->core_exception) {
            free_detached();  // e.g. Ctrl-C during the load: it completed, but the caller gets the exception
            load->raise_errors();
        }
        if (state_->ctx == nullptr) {
            throw CoreError(load->with_core_log("the core could not build a context from these components"));
        }
        // The core only warns when a component file fails to load (a format it cannot read) and goes on without
        // it: a context missing its text encoder or VAE crashes at the first call. Refuse it here.
        const std::string failed = failed_loads(*load);
        if (!failed.empty()) {
            free_detached();
            throw CoreError("the core could not read a component file and would go on without it: " + failed);
        }
    }

    py::list generate_image(ImageGenParams& request, py::object progress, py::object preview,
                            int preview_mode, int preview_interval, bool preview_noisy) {
        require_open();
        check_prompt("prompt", request.prompt);
        check_prompt("negative_prompt", request.negative_prompt);
        sd_img_gen_params_t c = request.plain;
        c.prompt          = request.prompt.c_str();
        c.negative_prompt = request.negative_prompt.c_str();
        point_sample_params(c.sample_params, request.skip_layers, request.custom_sigmas);
        const std::vector<sd_lora_t> loras = lora_views(request.loras);
        c.loras      = loras.empty() ? nullptr : loras.data();
        c.lora_count = static_cast<uint32_t>(loras.size());
        c.init_image    = request.init_image.view();
        c.control_image = request.control_image.view();
        std::vector<sd_image_t> refs = views_of(request.ref_images);
        c.ref_images       = refs.empty() ? nullptr : refs.data();
        c.ref_images_count = static_cast<int>(refs.size());
        std::vector<sd_image_t> ids = views_of(request.pm_id_images);
        c.pm_params.id_images       = ids.empty() ? nullptr : ids.data();
        c.pm_params.id_images_count = static_cast<int>(ids.size());
        c.pm_params.id_embed_path   = c_str_or_null(request.pm_id_embed_path);
        c.hires.model_path          = c_str_or_null(request.hires_model_path);
        c.cache.scm_mask            = c_str_or_null(request.cache_scm_mask);

        // As sd-cli does: with no mask given, an all-white mask of the output size.
        std::vector<uint8_t> full_mask;
        if (request.mask_image.empty()) {
            full_mask.assign(static_cast<size_t>(c.width) * c.height, 255);
            c.mask_image = {static_cast<uint32_t>(c.width), static_cast<uint32_t>(c.height), 1, full_mask.data()};
        } else {
            c.mask_image = request.mask_image.view();
        }

        sd_image_t* results = nullptr;
        py::list images;
        run_in_core(
            "generate_image", std::move(progress), std::move(preview), preview_mode, preview_interval,
            preview_noisy, [&](sd_ctx_t* ctx) { results = ::generate_image(ctx, &c); },
            [&] {
                if (results == nullptr) {
                    return false;
                }
                for (int i = 0; i < c.batch_count; ++i) {
                    if (results[i].data != nullptr) {
                        images.append(adopt_image(results[i]));
                    }
                }
                std::free(results);
                return images.size() > 0;
            });
        return images;
    }

    // Frames of one video as a single (F, H, W, C) uint8 array.
    py::array_t<uint8_t> generate_video(VideoGenParams& request, py::object progress, py::object preview,
                                        int preview_mode, int preview_interval, bool preview_noisy) {
        require_open();
        check_prompt("prompt", request.prompt);
        check_prompt("negative_prompt", request.negative_prompt);
        sd_vid_gen_params_t c = request.plain;
        c.prompt          = request.prompt.c_str();
        c.negative_prompt = request.negative_prompt.c_str();
        point_sample_params(c.sample_params, request.skip_layers, request.custom_sigmas);
        point_sample_params(c.high_noise_sample_params, request.high_noise_skip_layers,
                            request.high_noise_custom_sigmas);
        const std::vector<sd_lora_t> loras = lora_views(request.loras);
        c.loras      = loras.empty() ? nullptr : loras.data();
        c.lora_count = static_cast<uint32_t>(loras.size());
        c.init_image = request.init_image.view();
        c.end_image  = request.end_image.view();
        std::vector<sd_image_t> controls = views_of(request.control_frames);
        c.control_frames      = controls.empty() ? nullptr : controls.data();
        c.control_frames_size = static_cast<int>(controls.size());
        c.cache.scm_mask      = c_str_or_null(request.cache_scm_mask);

        sd_image_t* frames = nullptr;
        int frame_count    = 0;
        py::array_t<uint8_t> video;
        run_in_core(
            "generate_video", std::move(progress), std::move(preview), preview_mode, preview_interval,
            preview_noisy, [&](sd_ctx_t* ctx) { frames = ::generate_video(ctx, &c, &frame_count); },
            [&] {
                if (frames == nullptr) {
                    return false;
                }
                bool complete = frame_count > 0 && frames[0].data != nullptr;
                if (complete) {
                    const sd_image_t& first = frames[0];
                    video = py::array_t<uint8_t>({static_cast<py::ssize_t>(frame_count),
                                                  static_cast<py::ssize_t>(first.height),
                                                  static_cast<py::ssize_t>(first.width),
                                                  static_cast<py::ssize_t>(first.channel)});
                    const size_t frame_bytes = static_cast<size_t>(first.width) * first.height * first.channel;
                    for (int i = 0; i < frame_count; ++i) {
                        complete = complete && frames[i].data != nullptr && frames[i].width == first.width &&
                                   frames[i].height == first.height && frames[i].channel == first.channel;
                        if (complete) {
                            std::memcpy(video.mutable_data(i), frames[i].data, frame_bytes);
                        }
                    }
                }
                for (int i = 0; i < frame_count; ++i) {
                    std::free(frames[i].data);
                }
                std::free(frames);
                return complete;
            });
        return video;
    }

    int default_sample_method() {
        require_open();
        return default_sample_method_;
    }

    int default_scheduler(int sample_method) {
        require_open();
        if (sample_method < 0 || sample_method >= static_cast<int>(default_schedulers_.size())) {
            throw std::invalid_argument("sample_method " + std::to_string(sample_method) + " is out of range");
        }
        return default_schedulers_[sample_method];
    }

    bool supports_image_generation() {
        require_open();
        return supports_image_;
    }
    bool supports_video_generation() {
        require_open();
        return supports_video_;
    }

    // Stops the calls in flight or queued on this context (they raise Cancelled) and frees it. With `wait`, and
    // unless this thread is inside a core call's callback (which would wait for itself), returns once freed;
    // otherwise the free is queued behind the call in flight.
    void close(bool wait) {
        if (closed_.exchange(true)) {
            return;
        }
        cancel_epoch_.fetch_add(1);
        free_on_core_thread(state_, "closing a Context", wait);
    }

    bool closed() const { return closed_.load(); }

    // Any thread, no lock: calls in flight or waiting on this context stop; later calls are unaffected.
    void cancel() { cancel_epoch_.fetch_add(1); }

    ~NativeContext() {
        // Never blocks (it may run in a garbage collection inside a callback or log handler).
        if (!closed_.exchange(true)) {
            free_detached();
        }
    }

   private:
    void free_detached() { free_on_core_thread(state_, "freeing a Context", false); }

    // Runs `call` on the core thread with this call's callbacks and cancellation installed; then, with the GIL,
    // `own` takes the results (returning whether there are any) before any error is raised, so nothing leaks.
    template <typename Call, typename Own>
    void run_in_core(const char* what, py::object progress, py::object preview, int preview_mode,
                     int preview_interval, bool preview_noisy, Call call, Own own) {
        const bool wants_preview = !preview.is_none();
        bool was_closed          = false;
        auto state               = state_;
        bool spent               = false;
        auto core_call           = std::make_shared<CoreCall>(what, [&, state] {
            if (state->ctx == nullptr) {
                was_closed = true;  // closed by another thread while this call waited
                return;
            }
            if (state->params.scalars.free_params_immediately && generations_started_ > 0) {
                spent = true;  // the first generation freed the weights: this one would read freed buffers
                return;
            }
            ++generations_started_;
            PreviewScope preview_scope(wants_preview, preview_mode, preview_interval, preview_noisy);
            call(state->ctx.get());
        });
        core_call->cancel_epoch = &cancel_epoch_;
        core_call->start_epoch  = cancel_epoch_.load();  // a cancel() from now on stops this call
        run_on_core_thread(core_call, progress, preview);
        if (core_call->core_exception) {
            // The core stopped half way through (a failed check of its own): its state is not to be trusted.
            broken_ = std::string(what) + " failed inside the core";
        }
        const bool produced = own();
        core_call->raise_errors();
        if (was_closed) {
            throw std::invalid_argument("this Context is closed");
        }
        if (spent) {
            throw std::runtime_error("this Context was made with free_params_immediately=True and freed its weights "
                                     "during its first generation: make a new Context");
        }
        if (!produced) {
            throw CoreError(core_call->with_core_log("generation failed"));
        }
        const std::string failed = failed_loads(*core_call);
        if (!failed.empty()) {  // a LoRA the caller asked for was left out
            throw CoreError("the core could not load a file of this call and went on without it: " + failed);
        }
    }

    void require_open() const {
        if (closed_.load()) {
            throw std::invalid_argument("this Context is closed");
        }
        if (!broken_.empty()) {
            throw CoreError("this Context can no longer be used: " + broken_ +
                            " in an earlier call; close it and load the model again");
        }
    }

    std::shared_ptr<LoadedContext> state_;
    std::atomic<bool> closed_{false};
    std::atomic<uint64_t> cancel_epoch_{0};
    std::string broken_;  // set (with the GIL) after the core failed half way through a call
    int generations_started_ = 0;  // read and written on the core thread only
    int default_sample_method_ = 0;
    std::vector<int> default_schedulers_;
    bool supports_image_ = false, supports_video_ = false;
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

    using ImageArray = py::array_t<uint8_t, py::array::c_style>;
    py::class_<LoraSpec>(m, "LoraSpec", "One LoRA of a call: path, multiplier, high-noise model only.")
        .def(py::init([](std::string path, float multiplier, bool is_high_noise) {
                 return LoraSpec{std::move(path), multiplier, is_high_noise};
             }),
             py::arg("path"), py::arg("multiplier") = 1.0f, py::arg("is_high_noise") = false)
        .def_readonly("path", &LoraSpec::path)
        .def_readonly("multiplier", &LoraSpec::multiplier)
        .def_readonly("is_high_noise", &LoraSpec::is_high_noise);

// A plain field of `Params::plain` (a dotted path), or an enum field exposed as int.
#define SDCPP_FIELD(cls, Params, py_name, expr)                                                    \
    cls.def_property(                                                                              \
        py_name, [](const Params& p) { return p.plain.expr; },                                     \
        [](Params& p, decltype(Params{}.plain.expr) v) { p.plain.expr = v; })
#define SDCPP_ENUM(cls, Params, py_name, expr, enum_type)                                          \
    cls.def_property(                                                                              \
        py_name, [](const Params& p) { return static_cast<int>(p.plain.expr); },                   \
        [](Params& p, int v) { p.plain.expr = static_cast<enum_type>(v); })
#define SDCPP_SAMPLE_FIELDS(cls, Params, prefix, sample)                                           \
    SDCPP_FIELD(cls, Params, prefix "cfg_scale", sample.guidance.txt_cfg);                         \
    SDCPP_FIELD(cls, Params, prefix "img_cfg_scale", sample.guidance.img_cfg);                     \
    SDCPP_FIELD(cls, Params, prefix "guidance", sample.guidance.distilled_guidance);               \
    SDCPP_FIELD(cls, Params, prefix "slg_start", sample.guidance.slg.layer_start);                 \
    SDCPP_FIELD(cls, Params, prefix "slg_end", sample.guidance.slg.layer_end);                     \
    SDCPP_FIELD(cls, Params, prefix "slg_scale", sample.guidance.slg.scale);                       \
    SDCPP_ENUM(cls, Params, prefix "sampler", sample.sample_method, sample_method_t);              \
    SDCPP_ENUM(cls, Params, prefix "scheduler", sample.scheduler, scheduler_t);                    \
    SDCPP_FIELD(cls, Params, prefix "steps", sample.sample_steps);                                 \
    SDCPP_FIELD(cls, Params, prefix "eta", sample.eta);                                            \
    SDCPP_FIELD(cls, Params, prefix "shifted_timestep", sample.shifted_timestep);                  \
    SDCPP_FIELD(cls, Params, prefix "flow_shift", sample.flow_shift)
#define SDCPP_TILING_FIELDS(cls, Params)                                                           \
    SDCPP_FIELD(cls, Params, "vae_tiling", vae_tiling_params.enabled);                             \
    SDCPP_FIELD(cls, Params, "vae_tile_size_x", vae_tiling_params.tile_size_x);                    \
    SDCPP_FIELD(cls, Params, "vae_tile_size_y", vae_tiling_params.tile_size_y);                    \
    SDCPP_FIELD(cls, Params, "vae_tile_overlap", vae_tiling_params.target_overlap);                \
    SDCPP_FIELD(cls, Params, "vae_tile_rel_size_x", vae_tiling_params.rel_size_x);                 \
    SDCPP_FIELD(cls, Params, "vae_tile_rel_size_y", vae_tiling_params.rel_size_y)
#define SDCPP_CACHE_FIELDS(cls, Params)                                                            \
    SDCPP_ENUM(cls, Params, "cache_mode", cache.mode, sd_cache_mode_t);                            \
    SDCPP_FIELD(cls, Params, "cache_reuse_threshold", cache.reuse_threshold);                      \
    SDCPP_FIELD(cls, Params, "cache_start_percent", cache.start_percent);                          \
    SDCPP_FIELD(cls, Params, "cache_end_percent", cache.end_percent);                              \
    SDCPP_FIELD(cls, Params, "cache_error_decay_rate", cache.error_decay_rate);                    \
    SDCPP_FIELD(cls, Params, "cache_use_relative_threshold", cache.use_relative_threshold);        \
    SDCPP_FIELD(cls, Params, "cache_reset_error_on_compute", cache.reset_error_on_compute);        \
    SDCPP_FIELD(cls, Params, "cache_Fn_compute_blocks", cache.Fn_compute_blocks);                  \
    SDCPP_FIELD(cls, Params, "cache_Bn_compute_blocks", cache.Bn_compute_blocks);                  \
    SDCPP_FIELD(cls, Params, "cache_residual_diff_threshold", cache.residual_diff_threshold);      \
    SDCPP_FIELD(cls, Params, "cache_max_warmup_steps", cache.max_warmup_steps);                    \
    SDCPP_FIELD(cls, Params, "cache_max_cached_steps", cache.max_cached_steps);                    \
    SDCPP_FIELD(cls, Params, "cache_max_continuous_cached_steps", cache.max_continuous_cached_steps); \
    SDCPP_FIELD(cls, Params, "cache_taylorseer_n_derivatives", cache.taylorseer_n_derivatives);    \
    SDCPP_FIELD(cls, Params, "cache_taylorseer_skip_interval", cache.taylorseer_skip_interval);    \
    SDCPP_FIELD(cls, Params, "cache_scm_policy_dynamic", cache.scm_policy_dynamic);               \
    SDCPP_FIELD(cls, Params, "cache_spectrum_w", cache.spectrum_w);                                \
    SDCPP_FIELD(cls, Params, "cache_spectrum_m", cache.spectrum_m);                                \
    SDCPP_FIELD(cls, Params, "cache_spectrum_lam", cache.spectrum_lam);                            \
    SDCPP_FIELD(cls, Params, "cache_spectrum_window_size", cache.spectrum_window_size);            \
    SDCPP_FIELD(cls, Params, "cache_spectrum_flex_window", cache.spectrum_flex_window);            \
    SDCPP_FIELD(cls, Params, "cache_spectrum_warmup_steps", cache.spectrum_warmup_steps);          \
    SDCPP_FIELD(cls, Params, "cache_spectrum_stop_percent", cache.spectrum_stop_percent);          \
    cls.def_readwrite("cache_scm_mask", &Params::cache_scm_mask)

    py::class_<ImageGenParams> gen(m, "ImageGenParams",
                                   "Fields of sd_img_gen_params_t, initialised by sd_img_gen_params_init.");
    gen.def(py::init<>());
    gen.def_readwrite("prompt", &ImageGenParams::prompt);
    gen.def_readwrite("negative_prompt", &ImageGenParams::negative_prompt);
    gen.def_readwrite("skip_layers", &ImageGenParams::skip_layers);
    gen.def_readwrite("custom_sigmas", &ImageGenParams::custom_sigmas);
    gen.def_readwrite("loras", &ImageGenParams::loras);
    gen.def_readwrite("pm_id_embed_path", &ImageGenParams::pm_id_embed_path);
    gen.def_readwrite("hires_model_path", &ImageGenParams::hires_model_path);
    gen.def("set_init_image", [](ImageGenParams& p, const ImageArray& a) { p.init_image = OwnedImage(a); });
    gen.def("set_mask_image", [](ImageGenParams& p, const ImageArray& a) { p.mask_image = OwnedImage(a); });
    gen.def("set_control_image", [](ImageGenParams& p, const ImageArray& a) { p.control_image = OwnedImage(a); });
    gen.def("set_ref_images", [](ImageGenParams& p, const std::vector<ImageArray>& a) { p.ref_images = owned_images(a); });
    gen.def("set_pm_id_images", [](ImageGenParams& p, const std::vector<ImageArray>& a) { p.pm_id_images = owned_images(a); });
    SDCPP_FIELD(gen, ImageGenParams, "clip_skip", clip_skip);
    SDCPP_FIELD(gen, ImageGenParams, "width", width);
    SDCPP_FIELD(gen, ImageGenParams, "height", height);
    SDCPP_FIELD(gen, ImageGenParams, "strength", strength);
    SDCPP_FIELD(gen, ImageGenParams, "seed", seed);
    SDCPP_FIELD(gen, ImageGenParams, "batch_count", batch_count);
    SDCPP_FIELD(gen, ImageGenParams, "auto_resize_ref_image", auto_resize_ref_image);
    SDCPP_FIELD(gen, ImageGenParams, "increase_ref_index", increase_ref_index);
    SDCPP_FIELD(gen, ImageGenParams, "control_strength", control_strength);
    SDCPP_FIELD(gen, ImageGenParams, "pm_style_strength", pm_params.style_strength);
    SDCPP_SAMPLE_FIELDS(gen, ImageGenParams, "", sample_params);
    SDCPP_TILING_FIELDS(gen, ImageGenParams);
    SDCPP_CACHE_FIELDS(gen, ImageGenParams);
    SDCPP_FIELD(gen, ImageGenParams, "hires_enabled", hires.enabled);
    SDCPP_ENUM(gen, ImageGenParams, "hires_upscaler", hires.upscaler, sd_hires_upscaler_t);
    SDCPP_FIELD(gen, ImageGenParams, "hires_scale", hires.scale);
    SDCPP_FIELD(gen, ImageGenParams, "hires_target_width", hires.target_width);
    SDCPP_FIELD(gen, ImageGenParams, "hires_target_height", hires.target_height);
    SDCPP_FIELD(gen, ImageGenParams, "hires_steps", hires.steps);
    SDCPP_FIELD(gen, ImageGenParams, "hires_denoising_strength", hires.denoising_strength);
    SDCPP_FIELD(gen, ImageGenParams, "hires_upscale_tile_size", hires.upscale_tile_size);

    py::class_<VideoGenParams> vid(m, "VideoGenParams",
                                   "Fields of sd_vid_gen_params_t, initialised by sd_vid_gen_params_init.");
    vid.def(py::init<>());
    vid.def_readwrite("prompt", &VideoGenParams::prompt);
    vid.def_readwrite("negative_prompt", &VideoGenParams::negative_prompt);
    vid.def_readwrite("skip_layers", &VideoGenParams::skip_layers);
    vid.def_readwrite("custom_sigmas", &VideoGenParams::custom_sigmas);
    vid.def_readwrite("high_noise_skip_layers", &VideoGenParams::high_noise_skip_layers);
    vid.def_readwrite("high_noise_custom_sigmas", &VideoGenParams::high_noise_custom_sigmas);
    vid.def_readwrite("loras", &VideoGenParams::loras);
    vid.def("set_init_image", [](VideoGenParams& p, const ImageArray& a) { p.init_image = OwnedImage(a); });
    vid.def("set_end_image", [](VideoGenParams& p, const ImageArray& a) { p.end_image = OwnedImage(a); });
    vid.def("set_control_frames", [](VideoGenParams& p, const std::vector<ImageArray>& a) { p.control_frames = owned_images(a); });
    SDCPP_FIELD(vid, VideoGenParams, "clip_skip", clip_skip);
    SDCPP_FIELD(vid, VideoGenParams, "width", width);
    SDCPP_FIELD(vid, VideoGenParams, "height", height);
    SDCPP_FIELD(vid, VideoGenParams, "strength", strength);
    SDCPP_FIELD(vid, VideoGenParams, "seed", seed);
    SDCPP_FIELD(vid, VideoGenParams, "video_frames", video_frames);
    SDCPP_FIELD(vid, VideoGenParams, "moe_boundary", moe_boundary);
    SDCPP_FIELD(vid, VideoGenParams, "vace_strength", vace_strength);
    SDCPP_SAMPLE_FIELDS(vid, VideoGenParams, "", sample_params);
    SDCPP_SAMPLE_FIELDS(vid, VideoGenParams, "high_noise_", high_noise_sample_params);
    SDCPP_TILING_FIELDS(vid, VideoGenParams);
    SDCPP_CACHE_FIELDS(vid, VideoGenParams);
#undef SDCPP_FIELD
#undef SDCPP_ENUM
#undef SDCPP_SAMPLE_FIELDS
#undef SDCPP_TILING_FIELDS
#undef SDCPP_CACHE_FIELDS

    py::class_<NativeContext>(m, "NativeContext", "One loaded sd_ctx_t. Use sdcpp_py.Context.")
        .def(py::init<const ContextParams&>(), py::arg("params"))
        .def("generate_image", &NativeContext::generate_image, py::arg("params"), py::arg("progress") = py::none(),
             py::arg("preview") = py::none(), py::arg("preview_mode") = static_cast<int>(PREVIEW_PROJ),
             py::arg("preview_interval") = 1, py::arg("preview_noisy") = false,
             "Run generate_image with the GIL released; returns a list of (H, W, C) uint8 arrays that own the "
             "core's buffers.\n\nRaises:\n    SdcppError: the core failed, with its error lines.")
        .def("generate_video", &NativeContext::generate_video, py::arg("params"), py::arg("progress") = py::none(),
             py::arg("preview") = py::none(), py::arg("preview_mode") = static_cast<int>(PREVIEW_PROJ),
             py::arg("preview_interval") = 1, py::arg("preview_noisy") = false,
             "Run generate_video with the GIL released; returns the frames as one (F, H, W, C) uint8 array.")
        .def("default_sample_method", &NativeContext::default_sample_method)
        .def("default_scheduler", &NativeContext::default_scheduler, py::arg("sample_method"))
        .def("supports_image_generation", &NativeContext::supports_image_generation)
        .def("supports_video_generation", &NativeContext::supports_video_generation)
        .def("cancel", &NativeContext::cancel,
             "Stop the calls in flight or waiting on this context (they raise Cancelled); thread-safe.")
        .def("close", &NativeContext::close, py::arg("wait") = true,
             "Stop this context's calls and free it (idempotent). wait=False (or from inside a callback) queues "
             "the free behind the call in flight instead of waiting for it.")
        .def_property_readonly("closed", &NativeContext::closed);
}

}  // namespace sdcpp
