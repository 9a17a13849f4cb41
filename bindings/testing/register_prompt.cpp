// The core's prompt-weight parser (util.cpp) for the test suite: patch 0011's pieces and weights against a
// Python copy of the original parser, and its time on a long run of whitespace.
#include "testing.hpp"

#include <exception>
#include <functional>
#include <utility>
#include <vector>

#ifdef _WIN32
#define NOMINMAX
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <pthread.h>
#endif

#include "util.h"

namespace sdcpp::testing {

namespace {

// The parser recurses once per byte (std::regex): on a thread with a stack as large as _core's core thread.
constexpr size_t kStackBytes = size_t(256) << 20;

struct Job {
    std::function<void()> work;
    std::exception_ptr error;
};

#ifdef _WIN32
DWORD WINAPI job_entry(void* arg) {
#else
void* job_entry(void* arg) {
#endif
    auto* job = static_cast<Job*>(arg);
    try {
        job->work();
    } catch (...) {
        job->error = std::current_exception();
    }
    return 0;
}

// Runs `work` on a new thread with kStackBytes of stack and waits for it with the GIL released.
void run_with_large_stack(std::function<void()> work) {
    Job job{std::move(work), nullptr};
    bool started;
    {
        py::gil_scoped_release release;
#ifdef _WIN32
        HANDLE thread = CreateThread(nullptr, kStackBytes, job_entry, &job, STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
        started = thread != nullptr;
        if (started) {
            WaitForSingleObject(thread, INFINITE);
            CloseHandle(thread);
        }
#else
        pthread_attr_t attributes;
        pthread_t thread;
        started = pthread_attr_init(&attributes) == 0;
        if (started) {
            started = pthread_attr_setstacksize(&attributes, kStackBytes) == 0 &&
                      pthread_create(&thread, &attributes, job_entry, &job) == 0;
            pthread_attr_destroy(&attributes);
        }
        if (started) pthread_join(thread, nullptr);
#endif
    }
    if (!started) throw std::runtime_error("could not start a thread for the prompt parser");
    if (job.error) std::rethrow_exception(job.error);
}

py::list parse_prompt(const std::string& text) {
    std::vector<std::pair<std::string, float>> pieces;
    run_with_large_stack([&] { pieces = parse_prompt_attention(text); });
    py::list result;
    for (const auto& [piece, weight] : pieces) {
        // Pieces may split a UTF-8 sequence: invalid bytes become U+FFFD, as _core shows the core's text.
        PyObject* decoded = PyUnicode_DecodeUTF8(piece.data(), static_cast<Py_ssize_t>(piece.size()), "replace");
        if (decoded == nullptr) throw py::error_already_set();
        result.append(py::make_tuple(py::reinterpret_steal<py::str>(decoded), weight));
    }
    return result;
}

}  // namespace

void register_prompt(py::module_& m) {
    m.def("_parse_prompt_attention", &parse_prompt, py::arg("text"),
          "Test hook: the core's prompt-weight parser (util.cpp), as (text, weight) pairs.");
}

}  // namespace sdcpp::testing
