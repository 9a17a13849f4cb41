// Version, system and name-table queries that need no context.
#include "common.hpp"

#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "sdcpp_py_attention.h"
#include "sdcpp_py_conv.h"
#include "sdcpp_py_geglu.h"
#include "sdcpp_py_norm.h"

namespace sdcpp {

namespace {

template <typename Enum>
std::vector<std::string> names_of(const char* (*name_of)(Enum), int count) {
    std::vector<std::string> names;
    for (int i = 0; i < count; ++i) {
        names.emplace_back(name_of(static_cast<Enum>(i)));
    }
    return names;
}

}  // namespace

void register_info(py::module_& m) {
    m.def("core_version", [] { return std::string(sd_version()); }, "Version tag of the vendored core.");
    m.def("core_commit", [] { return std::string(sd_commit()); }, "Commit of the vendored core.");
    m.def("system_info", [] { return std::string(sd_get_system_info()); }, "The core's CPU/backend feature report.");
    m.def("physical_cores", &sd_get_num_physical_cores, "Physical CPU cores, the core's default thread count.");
    m.attr("BACKEND") = SDCPP_BACKEND;
#ifdef GGML_BACKEND_DL
    m.attr("PORTABLE_CPU") = true;
#else
    m.attr("PORTABLE_CPU") = false;
#endif
    m.def("_load_backends", [](const std::string& folder) {
        // ggml scores every libggml-cpu-<variant> there against this CPU and loads the best. It reports what it
        // loaded on stderr: keep those lines for the caller's logger instead (nothing printed at import).
        std::vector<std::string> lines;
        ggml_log_set([](ggml_log_level, const char* text, void* user) {
            static_cast<std::vector<std::string>*>(user)->emplace_back(text ? text : "");
        }, &lines);
        ggml_backend_load_all_from_path(folder.c_str());
        ggml_log_set(nullptr, nullptr);  // ggml's default again
        if (ggml_backend_reg_by_name("CPU") == nullptr) {
            std::string said;
            for (const std::string& line : lines) said += line;
            throw std::runtime_error("no ggml CPU backend for this machine could be loaded from " + folder +
                                     " (the libggml-cpu-* variant libraries are missing or none runs here)" +
                                     (said.empty() ? "" : ": " + said));
        }
        return lines;
    }, py::arg("folder"), "Load ggml's dynamic backends from `folder` (portable builds; once, at import); "
                          "returns ggml's log lines.");
    m.def("cpu_features", [] {
        py::dict features;
        ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU");
        auto get_features = cpu ? reinterpret_cast<ggml_backend_get_features_t>(
                                      ggml_backend_reg_get_proc_address(cpu, "ggml_backend_get_features"))
                                : nullptr;
        for (ggml_backend_feature* f = get_features ? get_features(cpu) : nullptr; f && f->name; ++f) {
            features[py::str(f->name)] = std::string(f->value);
        }
        return features;
    }, "The instruction sets and options the loaded CPU backend was compiled with, as ggml reports them.");
    m.def("fused_cpu_kernels", [] {
        py::list names;
        for (const char* name : {SDCPP_PY_CPU_ATTENTION, SDCPP_PY_CPU_CONV_2D, SDCPP_PY_CPU_GEGLU, SDCPP_PY_CPU_GROUP_NORM,
                                 SDCPP_PY_CPU_LAYER_NORM}) {
            if (sdcpp_py_cpu_kernel(name) != nullptr) names.append(name);
        }
        // Winograd convolutions (kernels/sdcpp_py_winograd.cpp): both of their nodes
        if (sdcpp_py_cpu_kernel(SDCPP_PY_CPU_WINOGRAD_INPUT) != nullptr &&
            sdcpp_py_cpu_kernel(SDCPP_PY_CPU_WINOGRAD_CONV) != nullptr) {
            names.append(SDCPP_PY_CPU_WINOGRAD_CONV);
        }
        return names;
    }, "Our fused CPU kernels (patches 0006-0008, 0017) the loaded CPU backend has: none without AVX2 + FMA + F16C.");
    m.def("cpu_bf16_products", [] { return sdcpp_py_cpu_kernel(SDCPP_PY_BF16_PRODUCTS) != nullptr; },
          "Whether the loaded CPU backend can run products in bf16 (AVX512_BF16, patch 0014), unless "
          "SDCPP_PY_CPU_KERNELS=avx2 restricts it.");
    m.def("cpu_amx_bf16_products", [] { return sdcpp_py_cpu_kernel(SDCPP_PY_AMX_BF16_PRODUCTS) != nullptr; },
          "Whether those bf16 products take Intel AMX tiles (the CPU has AMX-BF16 and Linux granted this process "
          "their state), unless SDCPP_PY_CPU_KERNELS=avx512 or avx2 restricts them.");
    m.def("devices", [] {
        if (ggml_backend_dev_count() == 0) {
            ggml_backend_load_all();  // a GGML_BACKEND_DL build registers its backends on demand
        }
        py::list devices;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t device = ggml_backend_dev_get(i);
            size_t free = 0, total = 0;
            ggml_backend_dev_memory(device, &free, &total);
            const char* type = "unknown";
            switch (ggml_backend_dev_type(device)) {
                case GGML_BACKEND_DEVICE_TYPE_CPU: type = "cpu"; break;
                case GGML_BACKEND_DEVICE_TYPE_GPU: type = "gpu"; break;
                case GGML_BACKEND_DEVICE_TYPE_IGPU: type = "igpu"; break;
                case GGML_BACKEND_DEVICE_TYPE_ACCEL: type = "accel"; break;
            }
            py::dict entry;
            entry["name"]         = ggml_backend_dev_name(device);
            entry["description"]  = ggml_backend_dev_description(device);
            entry["type"]         = type;
            entry["backend"]      = ggml_backend_reg_name(ggml_backend_dev_backend_reg(device));
            entry["memory_free"]  = free;
            entry["memory_total"] = total;
            devices.append(entry);
        }
        return devices;
    }, "ggml's device registry: name, description, type (cpu/gpu/igpu/accel), backend, memory in bytes.");
    m.def("core_patches", [] {
        std::vector<std::string> names;
        std::string all = SDCPP_CORE_PATCHES, name;  // comma-separated
        for (char c : all + ",") {
            if (c == ',') {
                if (!name.empty()) names.push_back(name);
                name.clear();
            } else {
                name += c;
            }
        }
        return names;
    }, "Our patches (patches/*.patch) compiled into this build's core, in the order applied.");

    // The core's own name tables, in enum order: the Python enums are generated from these.
    py::dict tables;
    tables["sample_method"] = names_of<sample_method_t>(sd_sample_method_name, SAMPLE_METHOD_COUNT);
    tables["scheduler"]     = names_of<scheduler_t>(sd_scheduler_name, SCHEDULER_COUNT);
    tables["rng_type"]      = names_of<rng_type_t>(sd_rng_type_name, RNG_TYPE_COUNT);
    tables["prediction"]    = names_of<prediction_t>(sd_prediction_name, PREDICTION_COUNT);
    tables["preview"]       = names_of<preview_t>(sd_preview_name, PREVIEW_COUNT);
    tables["lora_apply_mode"] = names_of<lora_apply_mode_t>(sd_lora_apply_mode_name, LORA_APPLY_MODE_COUNT);
    tables["hires_upscaler"] = names_of<sd_hires_upscaler_t>(sd_hires_upscaler_name, SD_HIRES_UPSCALER_COUNT);
    py::dict weight_types;  // sd_type_t has holes (removed types): keep only named values
    for (int i = 0; i < SD_TYPE_COUNT; ++i) {
        const char* name = sd_type_name(static_cast<sd_type_t>(i));
        const std::string text = name ? name : "";
        if (!text.empty() && text != "NONE" && text.find("DEPRECATED") == std::string::npos &&
            !weight_types.contains(text)) {
            weight_types[py::str(text)] = i;
        }
    }
    m.attr("NAME_TABLES") = tables;
    m.attr("WEIGHT_TYPES") = weight_types;
    m.attr("SD_TYPE_COUNT") = static_cast<int>(SD_TYPE_COUNT);

    // (elements per block, bytes per block) of every ggml type this build knows: header checks
    // use it to verify that a tensor's byte range matches its shape.
    py::dict layouts;
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const auto type = static_cast<ggml_type>(i);
        if (ggml_blck_size(type) > 0 && ggml_type_size(type) > 0) {
            layouts[py::int_(i)] = py::make_tuple(ggml_blck_size(type), ggml_type_size(type));
        }
    }
    m.attr("GGML_TYPE_LAYOUTS") = layouts;
}

}  // namespace sdcpp
