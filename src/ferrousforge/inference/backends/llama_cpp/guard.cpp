// ferrousforge guard: every llama.cpp call that can throw, behind a try/catch.
//
// A C++ exception that reaches a ctypes frame ends the process (std::terminate), so
// each function here catches everything, writes the message into `err` and returns a
// code instead. Compiled at first use against the llama.h of the library in use
// (see guard.py); loaded through ctypes. Return codes: 0 ok, FF_EXCEPTION on a C++
// exception (message in err), FF_NO_TOKEN when sampling found no allowed token.

#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <vector>

#define FF_OK 0
#define FF_EXCEPTION (-1)
#define FF_NO_TOKEN 1

namespace {

void set_err(char * err, size_t len, const char * msg) {
    if (err != nullptr && len > 0) {
        std::snprintf(err, len, "%s", msg);
    }
}

// Runs f(); turns any C++ exception into FF_EXCEPTION with its message.
template <typename F> int32_t guarded(char * err, size_t len, F && f) {
    try {
        return f();
    } catch (const std::exception & e) {
        set_err(err, len, e.what());
    } catch (...) {
        set_err(err, len, "unknown C++ exception");
    }
    return FF_EXCEPTION;
}

bool any_finite(const llama_token_data_array & cur) {
    for (size_t i = 0; i < cur.size; i++) {
        if (std::isfinite(cur.data[i].logit)) {
            return true;
        }
    }
    return false;
}

// The candidates of one output row: every token with its logit, banned ones at -inf.
void fill(std::vector<llama_token_data> & cur, const float * logits, int32_t n_vocab,
          const int32_t * banned, int32_t n_banned) {
    cur.resize(n_vocab);
    for (int32_t t = 0; t < n_vocab; t++) {
        cur[t] = llama_token_data{t, logits[t], 0.0f};
    }
    for (int32_t i = 0; i < n_banned; i++) {
        if (banned[i] >= 0 && banned[i] < n_vocab) {
            cur[banned[i]].logit = -INFINITY;
        }
    }
}

// The chain's pick, or -1 when it picked a token nothing allows (all were -inf).
llama_token pick(llama_sampler * chain, llama_token_data_array & cur_p) {
    llama_sampler_apply(chain, &cur_p);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size) {
        return -1;
    }
    const llama_token_data & sel = cur_p.data[cur_p.selected];
    return std::isfinite(sel.logit) ? sel.id : -1;
}

// Tokens tried before the whole vocabulary when the grammar rejects the free pick: first
// the best few, then the best few thousand (a 262k vocabulary costs tens of milliseconds
// per grammar pass; a forced token is rarely outside the best 4096).
constexpr size_t SHORT_FIRST = 64;
constexpr size_t SHORT_MAX = 4096;

// The constrained pick from the best-scoring tokens alone, when that is exact: the chain
// keeps only the `keep` highest logits of what the grammar allows (greedy: 1; a chain that
// starts with top-k: k), so once `keep` allowed tokens are found in descending order, the
// rest of the vocabulary cannot change the pick. -2 when the best SHORT_MAX did not hold
// `keep` allowed tokens (then the caller constrains the whole vocabulary). `cur` is
// reordered; `allowed` is scratch.
llama_token pick_from_best(llama_sampler * chain, llama_sampler * grammar,
                           std::vector<llama_token_data> & cur,
                           std::vector<llama_token_data> & allowed, size_t keep) {
    const size_t m = std::min(SHORT_MAX, cur.size());
    // Highest logit first; among equal logits the lower id first, as in the whole-vocabulary
    // order where greedy takes the first maximum.
    auto better = [](const llama_token_data & a, const llama_token_data & b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    std::nth_element(cur.begin(), cur.begin() + (m - 1), cur.end(), better);
    std::sort(cur.begin(), cur.begin() + m, better);
    allowed.clear();
    for (size_t lo = 0, hi = std::min(SHORT_FIRST, m); lo < m; lo = hi, hi = m) {
        llama_token_data_array part = {cur.data() + lo, hi - lo, -1, true};
        llama_sampler_apply(grammar, &part);
        for (size_t i = lo; i < hi; i++) {
            if (std::isfinite(cur[i].logit)) {
                allowed.push_back(cur[i]);
            }
        }
        if (allowed.size() >= keep) {
            llama_token_data_array best = {allowed.data(), allowed.size(), -1, true};
            return pick(chain, best);
        }
    }
    return -2;
}

}  // namespace

extern "C" {

// Sample one token from output row `idx` of the last decode.
//
// Like llama_sampler_sample, with the grammar kept outside the chain (as llama.cpp's
// common sampler does): the chain picks from the unconstrained row first, and only
// when the grammar rejects that pick is the grammar applied to the whole vocabulary.
// When no token is allowed (a completed grammar whose end-of-generation is banned,
// or every allowed token biased to -inf) it returns FF_NO_TOKEN and accepts nothing:
// accepting a disallowed token would throw, or abort inside llama.cpp.
//
// `keep` > 0 says the chain's pick depends only on the `keep` best allowed tokens (see
// pick_from_best): the constrained pick then tries the best-scoring tokens before the
// whole vocabulary, with the same result. 0: always the whole vocabulary.
int32_t ff_sample(llama_sampler * chain, llama_sampler * grammar, llama_context * ctx,
                  int32_t idx, const int32_t * banned, int32_t n_banned, int32_t keep,
                  llama_token * out, char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        static thread_local std::vector<llama_token_data> cur;
        static thread_local std::vector<llama_token_data> allowed;
        const float * logits = llama_get_logits_ith(ctx, idx);
        if (logits == nullptr) {
            set_err(err, err_len, "no logits for this output row");
            return FF_EXCEPTION;
        }
        const llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx));
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);

        fill(cur, logits, n_vocab, banned, n_banned);
        llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
        llama_token token = pick(chain, cur_p);
        if (grammar != nullptr && token >= 0) {
            llama_token_data one = {token, 1.0f, 0.0f};
            llama_token_data_array one_p = {&one, 1, -1, false};
            llama_sampler_apply(grammar, &one_p);
            if (!std::isfinite(one.logit)) {
                token = -1;  // the grammar rejects the free pick: constrain, then pick again
            }
        }
        if (grammar != nullptr && token < 0 && keep > 0 && (size_t) keep <= SHORT_MAX) {
            fill(cur, logits, n_vocab, banned, n_banned);
            token = pick_from_best(chain, grammar, cur, allowed, (size_t) keep);
        }
        if (grammar != nullptr && token < 0) {
            fill(cur, logits, n_vocab, banned, n_banned);
            cur_p = {cur.data(), cur.size(), -1, false};
            llama_sampler_apply(grammar, &cur_p);
            if (!any_finite(cur_p)) {
                return FF_NO_TOKEN;
            }
            token = pick(chain, cur_p);
        }
        if (token < 0) {
            return FF_NO_TOKEN;
        }
        if (grammar != nullptr) {
            llama_sampler_accept(grammar, token);
        }
        llama_sampler_accept(chain, token);
        *out = token;
        return FF_OK;
    });
}

// How many of the first `n` tokens the grammar allows in its current state (a probe of
// the cost of one constrained step; the grammar's state is not changed).
int32_t ff_grammar_probe(llama_sampler * grammar, int32_t n, int32_t * allowed, char * err,
                         size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        std::vector<llama_token_data> cur(n);
        for (int32_t t = 0; t < n; t++) {
            cur[t] = llama_token_data{t, 0.0f, 0.0f};
        }
        llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
        llama_sampler_apply(grammar, &cur_p);
        int32_t k = 0;
        for (const auto & c : cur) {
            k += std::isfinite(c.logit) ? 1 : 0;
        }
        *allowed = k;
        return FF_OK;
    });
}

int32_t ff_grammar_init(const llama_vocab * vocab, const char * text, const char * root,
                        llama_sampler ** out, char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        *out = llama_sampler_init_grammar(vocab, text, root);
        return FF_OK;
    });
}

// A lazy grammar that wakes on `pattern` (a std::regex; the constrained text starts at its
// first group). Used with a pattern that matches at once on a short replay of the tokens
// that start a tool call: the text before them is never searched (see lazy_grammar.py).
int32_t ff_grammar_init_lazy(const llama_vocab * vocab, const char * text, const char * root,
                             const char * pattern, llama_sampler ** out, char * err,
                             size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        const char * patterns[1] = {pattern};
        *out = llama_sampler_init_grammar_lazy_patterns(vocab, text, root, patterns, 1, nullptr, 0);
        return FF_OK;
    });
}

int32_t ff_sampler_accept(llama_sampler * smpl, llama_token token, char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        llama_sampler_accept(smpl, token);
        return FF_OK;
    });
}

int32_t ff_decode(llama_context * ctx, const llama_batch * batch, int32_t * rc, char * err,
                  size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        *rc = llama_decode(ctx, *batch);
        return FF_OK;
    });
}

int32_t ff_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                    llama_token * tokens, int32_t n_max, bool add_special, bool parse_special,
                    int32_t * n, char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        *n = llama_tokenize(vocab, text, text_len, tokens, n_max, add_special, parse_special);
        return FF_OK;
    });
}

int32_t ff_model_load(const char * path, const llama_model_params * params, llama_model ** out,
                      char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        *out = llama_model_load_from_file(path, *params);
        return FF_OK;
    });
}

int32_t ff_init_from_model(llama_model * model, const llama_context_params * params,
                           llama_context ** out, char * err, size_t err_len) {
    return guarded(err, err_len, [&]() -> int32_t {
        *out = llama_init_from_model(model, *params);
        return FF_OK;
    });
}

// A self-test: proves that an exception thrown in here is caught in here.
int32_t ff_selftest(char * err, size_t err_len) {
    return guarded(err, err_len, []() -> int32_t { throw std::runtime_error("guard self-test"); });
}

}  // extern "C"
