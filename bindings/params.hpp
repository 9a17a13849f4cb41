// What a call hands the core, owned on the C++ side: the core's parameter structs with their strings, lists
// and images copied out of Python, so the core can read them with the GIL released. Bound in register_params.cpp.
#pragma once

#include "common.hpp"

#include <string>
#include <utility>
#include <vector>

namespace sdcpp {

// sd_ctx_params_t with owned strings. Scalars start at the core's sd_ctx_params_init values,
// so the Python defaults are the core's defaults by construction.
struct ContextParams {
    std::string model, clip_l, clip_g, clip_vision, t5xxl, llm, llm_vision, diffusion_model,
        high_noise_diffusion_model, vae, taesd, control_net, photo_maker, tensor_type_rules;
    std::vector<std::pair<std::string, std::string>> embeddings;  // (name, path)
    sd_ctx_params_t scalars{};
    int cpu_precision = 0;  // ours, not the core's: 0 f32, 1 bf16 products on the CPU (patch 0014)

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

inline std::vector<OwnedImage> owned_images(const std::vector<py::array_t<uint8_t, py::array::c_style>>& arrays) {
    std::vector<OwnedImage> images;
    for (const auto& array : arrays) {
        images.emplace_back(array);
    }
    return images;
}

inline std::vector<sd_image_t> views_of(std::vector<OwnedImage>& images) {
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

inline std::vector<sd_lora_t> lora_views(const std::vector<LoraSpec>& loras) {
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

inline void point_sample_params(sd_sample_params_t& sample, std::vector<int>& skip_layers, std::vector<float>& sigmas) {
    sample.guidance.slg.layers      = skip_layers.empty() ? nullptr : skip_layers.data();
    sample.guidance.slg.layer_count = skip_layers.size();
    sample.custom_sigmas            = sigmas.empty() ? nullptr : sigmas.data();
    sample.custom_sigmas_count      = static_cast<int>(sigmas.size());
}

}  // namespace sdcpp
