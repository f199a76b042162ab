// emu_registry.hpp: how each host-compiled kernel file registers its entry
// points by name, with an adapter that unpacks cuLaunchKernel-style
// arguments (args[i] points at argument i) into a typed call.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

namespace emu {
using Kernel = void (*)(void**);

struct Registration {
    Registration(const char* name, Kernel k);
};

template <class... A, std::size_t... I>
void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
constexpr std::size_t arity(void (*)(A...)) {
    return sizeof...(A);
}

template <auto F>
void invoke(void** args) {
    call_unpacked(F, args, std::make_index_sequence<arity(F)>{});
}
}  // namespace emu
