// Load only a model's vocabulary through libllama from C (no Python): tells a crash in the
// library apart from one in the Python process around it. Built and run by hand:
//   gcc gpu/probe_vocab.c -I.gpu/llama.cpp/include -I.gpu/llama.cpp/ggml/include \
//       -L/tmp/build/bin -lllama -Wl,-rpath,/tmp/build/bin -o /tmp/probe && /tmp/probe M.gguf
#include <stdio.h>
#include "llama.h"

int main(int argc, char ** argv) {
    if (argc < 2) return 2;
    llama_backend_init();
    struct llama_model_params p = llama_model_default_params();
    p.vocab_only = 1;
    struct llama_model * m = llama_model_load_from_file(argv[1], p);
    printf("C vocab-only load: %s\n", m ? "ok" : "failed");
    if (m) llama_model_free(m);
    return m ? 0 : 1;
}
