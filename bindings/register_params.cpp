// Python classes for the parameter structs of params.hpp: every field the core reads, by name.
#include "common.hpp"

#include "params.hpp"

namespace sdcpp {

void register_params(py::module_& m) {
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
    ctx_params.def_readwrite("cpu_precision", &ContextParams::cpu_precision);
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
}

}  // namespace sdcpp
