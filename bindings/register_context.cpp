// The native Context: owns one sd_ctx_t, loads and generates with the GIL released.
#include "common.hpp"

#include "params.hpp"
#include "sdcpp_py_precision.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

namespace sdcpp {

namespace {

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
// The context's precision for the graphs the core builds during one call on this thread (patch 0014).
struct GraphPrecisionScope {
    explicit GraphPrecisionScope(int cpu_precision) { sdcpp_py_set_graph_bf16(cpu_precision == 1); }
    ~GraphPrecisionScope() { sdcpp_py_set_graph_bf16(0); }
    GraphPrecisionScope(const GraphPrecisionScope&)            = delete;
    GraphPrecisionScope& operator=(const GraphPrecisionScope&) = delete;
};

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
            GraphPrecisionScope precision(state->params.cpu_precision);
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
            preview_noisy, [&](sd_ctx_t* ctx) { return refused_loras(ctx, c.loras, c.lora_count); },
            [&](sd_ctx_t* ctx) { results = ::generate_image(ctx, &c); },
            [&] {
                if (results == nullptr) {
                    return false;
                }
                int i = 0;
                try {
                    for (; i < c.batch_count; ++i) {
                        if (results[i].data != nullptr) {
                            images.append(adopt_image(results[i]));
                        }
                    }
                } catch (...) {
                    // A MemoryError: image i is freed by adopt_image or its array; the rest are still ours.
                    for (int rest = i + 1; rest < c.batch_count; ++rest) std::free(results[rest].data);
                    std::free(results);
                    throw;
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
            preview_noisy, [&](sd_ctx_t* ctx) { return refused_loras(ctx, c.loras, c.lora_count); },
            [&](sd_ctx_t* ctx) { frames = ::generate_video(ctx, &c, &frame_count); },
            [&] {
                if (frames == nullptr) {
                    return false;
                }
                // The frames are copied into one array: freed here however this ends (a MemoryError included).
                struct FreeFrames {
                    sd_image_t* frames;
                    int count;
                    ~FreeFrames() {
                        for (int i = 0; i < count; ++i) std::free(frames[i].data);
                        std::free(frames);
                    }
                } free_frames{frames, frame_count};
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

    // Stops the calls in flight or queued on this context (they raise Cancelled) and frees it, waiting as
    // free_on_core_thread says.
    void close(bool wait) {
        if (closed_.exchange(true)) {
            return;
        }
        cancel_epoch_.fetch_add(1);
        free_on_core_thread(state_, "closing a Context", wait);
    }

    bool closed() const { return closed_.load(); }

    // Open, and no earlier call failed inside the core (which leaves it half way: see run_in_core).
    bool usable() const { return !closed_.load() && broken_in_.load() == nullptr; }

    // Any thread, no lock: calls in flight or waiting on this context stop; later calls are unaffected.
    void cancel() { cancel_epoch_.fetch_add(1); }

    ~NativeContext() {
        // Never blocks (it may run in a garbage collection inside a callback or log handler).
        if (!closed_.exchange(true)) {
            free_detached();
        }
    }

   private:
    // The core's LoRA code fails its checks half way (weights merged, graphs begun) on a LoRA that does not fit
    // the model, and takes a merged file out of the weights as whatever the file holds now: patch 0024 checks
    // the call's LoRAs first, leaving the context as it was. On the core thread; "" when they can be applied.
    static std::string refused_loras(sd_ctx_t* ctx, const sd_lora_t* loras, uint32_t count) {
        char reason[4096] = "";
        return sd_check_loras(ctx, loras, count, reason, sizeof reason) ? "" : "loras: " + std::string(reason);
    }

    void free_detached() { free_on_core_thread(state_, "freeing a Context", false); }

    // Runs `call` on the core thread with this call's callbacks and cancellation installed, unless `refuse`
    // (run there first) gives a reason not to, raised as a ValueError; then, with the GIL, `own` takes the
    // results (returning whether there are any) before any error is raised, so nothing leaks.
    template <typename Refuse, typename Call, typename Own>
    void run_in_core(const char* what, py::object progress, py::object preview, int preview_mode,
                     int preview_interval, bool preview_noisy, Refuse refuse, Call call, Own own) {
        const bool wants_preview = !preview.is_none();
        bool was_closed          = false;
        bool was_broken          = false;
        auto state               = state_;
        bool spent               = false;
        std::string refusal;
        auto core_call = std::make_shared<CoreCall>(what, [&, state] {
            if (state->ctx == nullptr) {
                was_closed = true;  // closed by another thread while this call waited
                return;
            }
            if (broken_in_.load() != nullptr) {
                was_broken = true;  // an earlier call, queued before this one, left the core half way
                return;
            }
            if (state->params.scalars.free_params_immediately && generations_started_ > 0) {
                spent = true;  // the first generation freed the weights: this one would read freed buffers
                return;
            }
            refusal = refuse(state->ctx.get());
            if (!refusal.empty()) {
                return;  // not a generation: nothing of the context was touched
            }
            ++generations_started_;
            PreviewScope preview_scope(wants_preview, preview_mode, preview_interval, preview_noisy);
            GraphPrecisionScope precision(state->params.cpu_precision);
            try {
                call(state->ctx.get());
            } catch (...) {
                // The core stopped half way through (a failed check of its own): its state is not to be
                // trusted. Marked here, before the next queued call can start on it.
                broken_in_.store(what);
                throw;
            }
        });
        core_call->cancel_epoch = &cancel_epoch_;
        core_call->start_epoch  = cancel_epoch_.load();  // a cancel() from now on stops this call
        run_on_core_thread(core_call, progress, preview);
        if (core_call->core_exception) {
            const char* none = nullptr;  // also a call the core thread never finished (forked in a callback)
            broken_in_.compare_exchange_strong(none, what);
        }
        const bool produced = own();
        core_call->raise_errors();
        if (was_closed) {
            throw std::invalid_argument("this Context is closed");
        }
        if (was_broken) {
            require_open();  // raises what the earlier call broke
        }
        if (spent) {
            throw std::runtime_error("this Context was made with free_params_immediately=True and freed its weights "
                                     "during its first generation: make a new Context");
        }
        if (!refusal.empty()) {
            throw std::invalid_argument(refusal);
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
        if (const char* broken_in = broken_in_.load()) {
            throw CoreError("this Context can no longer be used: " + std::string(broken_in) +
                            " failed inside the core in an earlier call; close it and load the model again");
        }
    }

    std::shared_ptr<LoadedContext> state_;
    std::atomic<bool> closed_{false};
    std::atomic<uint64_t> cancel_epoch_{0};
    // The call (its name) in which the core failed half way through, set on the core thread (or by its caller
    // for a call the core thread never finished); nullptr: none.
    std::atomic<const char*> broken_in_{nullptr};
    int generations_started_ = 0;  // read and written on the core thread only
    int default_sample_method_ = 0;
    std::vector<int> default_schedulers_;
    bool supports_image_ = false, supports_video_ = false;
};

}  // namespace

void register_context(py::module_& m) {
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
        .def_property_readonly("closed", &NativeContext::closed)
        .def_property_readonly("usable", &NativeContext::usable);
}

}  // namespace sdcpp
