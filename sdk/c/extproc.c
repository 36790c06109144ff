/*
 * extproc.c: the implementation of extproc.h. Compiled as C (extproc-cc does it), also when the
 * plugin itself is C++.
 */
#include "extproc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --- the Extism kernel and the extproc host functions ------------------------------------------ */

#define XP__ENV(name) __attribute__((import_module("extism:host/env"), import_name(#name)))
#define XP__USER(name) __attribute__((import_module("extism:host/user"), import_name(#name)))

XP__ENV(input_offset) uint64_t xp__input_offset(void);
XP__ENV(input_length) uint64_t xp__input_length(void);
XP__ENV(input_load_u8) uint8_t xp__input_load_u8(uint64_t offset);
XP__ENV(input_load_u64) uint64_t xp__input_load_u64(uint64_t offset);
XP__ENV(length) uint64_t xp__length(uint64_t offset);
XP__ENV(alloc) uint64_t xp__alloc(uint64_t length);
XP__ENV(free) void xp__free(uint64_t offset);
XP__ENV(output_set) void xp__output_set(uint64_t offset, uint64_t length);
XP__ENV(error_set) void xp__error_set(uint64_t offset);
XP__ENV(config_get) uint64_t xp__config_get(uint64_t offset);
XP__ENV(store_u8) void xp__store_u8(uint64_t offset, uint8_t value);
XP__ENV(load_u8) uint8_t xp__load_u8(uint64_t offset);
XP__ENV(store_u64) void xp__store_u64(uint64_t offset, uint64_t value);
XP__ENV(load_u64) uint64_t xp__load_u64(uint64_t offset);

XP__USER(extproc_kv_get) uint64_t xp__kv_get(uint64_t key);
XP__USER(extproc_kv_set) int32_t xp__kv_set(uint64_t key, uint64_t value, int64_t ttl_ms);
XP__USER(extproc_kv_delete) int32_t xp__kv_delete(uint64_t key);
XP__USER(extproc_kv_incr) int64_t xp__kv_incr(uint64_t key, int64_t delta, int64_t ttl_ms);
XP__USER(extproc_kv_cas) int32_t xp__kv_cas(uint64_t key, uint64_t expected, uint64_t value, int64_t ttl_ms);
XP__USER(extproc_now_ms) int64_t xp__now_ms(void);
XP__USER(extproc_log) void xp__log(int32_t level, uint64_t message);
/* Not Extism's own http_request, which the server refuses for every host. */
XP__USER(extproc_http_request) uint64_t xp__http_request(uint64_t request);

/* --- memory: a bump arena per call, and one for the instance's lifetime ------------------------ */

typedef struct xp__chunk {
    struct xp__chunk *next;
    size_t used, cap;
} xp__chunk;

typedef struct xp__arena {
    xp__chunk *head;
} xp__arena;

static xp__arena xp__call_arena, xp__instance_arena;
static xp__arena *xp__arena_now = &xp__call_arena;

#define XP__CHUNK 65536
#define XP__HEADER ((sizeof(xp__chunk) + 7) & ~(size_t)7)

static void xp__oom(void) {
    /* Extism's memory limit was reached: the call cannot go on. */
    __builtin_trap();
}

void *xp_alloc(size_t len) {
    xp__arena *a = xp__arena_now;
    size_t need = (len + 7) & ~(size_t)7;
    xp__chunk *c = a->head;
    if (c == NULL || c->cap - c->used < need) {
        size_t cap = need > XP__CHUNK ? need : XP__CHUNK;
        c = (xp__chunk *)malloc(XP__HEADER + cap);
        if (c == NULL) xp__oom();
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = (char *)c + XP__HEADER + c->used;
    c->used += need;
    return p;
}

void xp_call_end(void) {
    /* Keeps the oldest chunk for the next call, so a small plugin mallocs nothing per call. */
    xp__chunk *c = xp__call_arena.head;
    while (c != NULL && c->next != NULL) {
        xp__chunk *next = c->next;
        free(c);
        c = next;
    }
    if (c != NULL) c->used = 0;
    xp__call_arena.head = c;
}

xp_str xp_str_copy(const void *bytes, size_t len) {
    char *p = (char *)xp_alloc(len + 1);
    if (len > 0) memcpy(p, bytes, len);
    p[len] = 0;
    xp_str s = {p, len};
    return s;
}

static xp_str xp__cstr(const char *s) {
    xp_str r = {s, s == NULL ? 0 : strlen(s)};
    return r;
}

static const xp_str xp__none = {NULL, 0};

/* Where written bytes go. XP__GROW: a buffer in the arena, grown as needed. XP__COUNT: nowhere, only
 * counted, to size a buffer or an Extism block exactly before writing (a doubling buffer of a large body
 * leaves every smaller step behind in the arena). XP__EXTISM: an Extism block (the call's output, written
 * in place), `p` staging small pieces for it. */
enum { XP__GROW, XP__COUNT, XP__EXTISM };

typedef struct xp__buf {
    char *p;
    size_t len, cap;
    int mode;
    /* XP__EXTISM: where the staged bytes go next. */
    uint64_t at;
} xp__buf;

static xp__buf xp__growing(void) {
    xp__buf b = {NULL, 0, 0, XP__GROW, 0};
    return b;
}

static xp__buf xp__counter(void) {
    xp__buf b = {NULL, 0, 0, XP__COUNT, 0};
    return b;
}

/* A buffer that holds `len` bytes (and a NUL) without growing. */
static xp__buf xp__sized(size_t len) {
    xp__buf b = {(char *)xp_alloc(len + 1), 0, len + 1, XP__GROW, 0};
    return b;
}

/* Copies `len` bytes to Extism memory at `offset`, in 8-byte words to keep host calls few. */
static void xp__copy_to_extism(uint64_t offset, const void *bytes, size_t len) {
    const unsigned char *b = (const unsigned char *)bytes;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        xp__store_u64(offset + i, w);
    }
    for (; i < len; i++) xp__store_u8(offset + i, b[i]);
}

static void xp__flush(xp__buf *b) {
    xp__copy_to_extism(b->at, b->p, b->len);
    b->at += b->len;
    b->len = 0;
}

static void xp__reserve(xp__buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap < 64 ? 64 : b->cap * 2;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = (char *)xp_alloc(cap);
    if (b->len > 0) memcpy(p, b->p, b->len);
    b->p = p;
    b->cap = cap;
}

static void xp__put(xp__buf *b, const void *bytes, size_t len) {
    if (b->mode == XP__COUNT) {
        b->len += len;
    } else if (b->mode == XP__EXTISM) {
        if (b->len + len > b->cap) xp__flush(b);
        /* Long runs (a body's text) go straight on; punctuation and escapes are gathered. */
        if (len >= b->cap) {
            xp__copy_to_extism(b->at, bytes, len);
            b->at += len;
        } else {
            memcpy(b->p + b->len, bytes, len);
            b->len += len;
        }
    } else {
        xp__reserve(b, len);
        if (len > 0) memcpy(b->p + b->len, bytes, len);
        b->len += len;
    }
}

static void xp__puts(xp__buf *b, const char *s) { xp__put(b, s, strlen(s)); }

static void xp__putc(xp__buf *b, char c) { xp__put(b, &c, 1); }

static xp_str xp__done(xp__buf *b) {
    xp__reserve(b, 0);
    b->p[b->len] = 0;
    xp_str s = {b->p, b->len};
    return s;
}

/* Extism memory blocks. */
static uint64_t xp__to_extism(const void *bytes, size_t len) {
    uint64_t offset = xp__alloc(len);
    xp__copy_to_extism(offset, bytes, len);
    return offset;
}

static uint64_t xp__cstr_to_extism(const char *s) { return xp__to_extism(s, strlen(s)); }

static xp_str xp__from_extism(uint64_t offset) {
    size_t len = (size_t)xp__length(offset);
    char *p = (char *)xp_alloc(len + 1);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = xp__load_u64(offset + i);
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++) p[i] = (char)xp__load_u8(offset + i);
    p[len] = 0;
    xp_str s = {p, len};
    return s;
}

/* The block a host function returned (freed here), or absent for offset 0. */
static xp_str xp__take_extism(uint64_t offset) {
    if (offset == 0) return xp__none;
    xp_str s = xp__from_extism(offset);
    xp__free(offset);
    return s;
}

xp_str xp_raw_input(void) {
    size_t len = (size_t)xp__input_length();
    char *p = (char *)xp_alloc(len + 1);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = xp__input_load_u64(i);
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++) p[i] = (char)xp__input_load_u8(i);
    p[len] = 0;
    xp_str s = {p, len};
    return s;
}

void xp_raw_output(const void *bytes, size_t len) { xp__output_set(xp__to_extism(bytes, len), len); }

int xp_fail(const char *message) {
    xp__error_set(xp__cstr_to_extism(message));
    return 1;
}

/* --- UTF-8 and base64 -------------------------------------------------------------------------- */

int xp_is_utf8(const void *bytes, size_t n) {
    const unsigned char *b = (const unsigned char *)bytes;
    size_t i = 0;
    while (i < n) {
        uint64_t word;
        /* Eight ASCII bytes at a time: bodies are mostly ASCII, and every output body is checked. */
        if (i + 8 <= n && (memcpy(&word, b + i, 8), (word & 0x8080808080808080ull) == 0)) {
            i += 8;
            continue;
        }
        unsigned c = b[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t extra;
        uint32_t min, cp;
        if (c >= 0xc2 && c <= 0xdf) {
            extra = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + extra >= n) return 0;
        for (size_t j = 1; j <= extra; j++) {
            unsigned d = b[i + j];
            if ((d & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (d & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += extra + 1;
    }
    return 1;
}

static const char xp__b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The base64 of `bytes` onto `w`, a block at a time: a large body needs no encoded copy. */
static void xp__put_base64(xp__buf *w, const void *bytes, size_t n) {
    const unsigned char *b = (const unsigned char *)bytes;
    char block[1024];
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        size_t rest = n - i;
        uint32_t v = (uint32_t)b[i] << 16 | (rest > 1 ? (uint32_t)b[i + 1] << 8 : 0) | (rest > 2 ? b[i + 2] : 0);
        block[o++] = xp__b64[v >> 18];
        block[o++] = xp__b64[(v >> 12) & 63];
        block[o++] = rest > 1 ? xp__b64[(v >> 6) & 63] : '=';
        block[o++] = rest > 2 ? xp__b64[v & 63] : '=';
        if (o == sizeof block) {
            xp__put(w, block, o);
            o = 0;
        }
    }
    xp__put(w, block, o);
}

xp_str xp_base64_encode(const void *bytes, size_t n) {
    xp__buf b = xp__sized((n + 2) / 3 * 4);
    xp__put_base64(&b, bytes, n);
    return xp__done(&b);
}

static int xp__sextet(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes into `out`, which may be `text` itself (a body decoded where its base64 was): each 4 characters
 * are read before the 3 bytes they give are written. 0 when `text` is not padded standard base64. */
static int xp__base64_decode_to(const char *text, size_t n, char *out, size_t *out_len) {
    if (n % 4 != 0) return 0;
    size_t pad = 0;
    if (n > 0 && text[n - 1] == '=') pad++;
    if (pad == 1 && n > 1 && text[n - 2] == '=') pad++;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t acc = 0;
        for (size_t j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)text[i + j];
            int v = c == '=' && i + j >= n - pad ? 0 : xp__sextet(c);
            if (v < 0) return 0;
            acc = acc << 6 | (uint32_t)v;
        }
        out[o++] = (char)(acc >> 16);
        out[o++] = (char)(acc >> 8);
        out[o++] = (char)acc;
    }
    *out_len = o - pad;
    return 1;
}

int xp_base64_decode(const char *text, size_t n, xp_str *out) {
    char *p = (char *)xp_alloc(n / 4 * 3 + 1);
    size_t len;
    if (!xp__base64_decode_to(text, n, p, &len)) return 0;
    p[len] = 0;
    out->ptr = p;
    out->len = len;
    return 1;
}

/* --- JSON values ------------------------------------------------------------------------------- */

struct xp_json {
    xp_kind kind;
    int flag;
    /* A number's text, or a string's bytes. */
    xp_str text;
    /* Array elements or object member values, and object member names. */
    xp_json **items;
    xp_str *keys;
    size_t count, cap;
};

static xp_json *xp__value(xp_kind kind) {
    xp_json *v = (xp_json *)xp_alloc(sizeof(xp_json));
    memset(v, 0, sizeof *v);
    v->kind = kind;
    return v;
}

xp_json *xp_json_null(void) { return xp__value(XP_NULL); }

xp_json *xp_json_bool(int value) {
    xp_json *v = xp__value(XP_BOOL);
    v->flag = value != 0;
    return v;
}

xp_json *xp_json_string_n(const void *bytes, size_t len) {
    xp_json *v = xp__value(XP_STRING);
    v->text = xp_str_copy(bytes, len);
    return v;
}

xp_json *xp_json_string(const char *text) { return xp_json_string_n(text, strlen(text)); }

xp_json *xp_json_array(void) { return xp__value(XP_ARRAY); }
xp_json *xp_json_object(void) { return xp__value(XP_OBJECT); }

xp_kind xp_json_kind(const xp_json *v) { return v == NULL ? XP_NULL : v->kind; }

size_t xp_json_length(const xp_json *v) {
    return v != NULL && (v->kind == XP_ARRAY || v->kind == XP_OBJECT) ? v->count : 0;
}

xp_json *xp_json_at(const xp_json *v, size_t index) { return index < xp_json_length(v) ? v->items[index] : NULL; }

xp_str xp_json_key_at(const xp_json *v, size_t index) {
    return xp_json_kind(v) == XP_OBJECT && index < v->count ? v->keys[index] : xp__none;
}

static long xp__index_of(const xp_json *v, const char *key, size_t len) {
    if (xp_json_kind(v) != XP_OBJECT) return -1;
    for (size_t i = 0; i < v->count; i++) {
        if (v->keys[i].len == len && memcmp(v->keys[i].ptr, key, len) == 0) return (long)i;
    }
    return -1;
}

xp_json *xp_json_get(const xp_json *v, const char *key) {
    long i = xp__index_of(v, key, strlen(key));
    return i < 0 ? NULL : v->items[i];
}

int xp_json_has(const xp_json *v, const char *key) { return xp__index_of(v, key, strlen(key)) >= 0; }

int xp_json_as_bool(const xp_json *v, int fallback) { return xp_json_kind(v) == XP_BOOL ? v->flag : fallback; }

static double xp__parse_double(const char *text, size_t len);

double xp_json_as_number(const xp_json *v, double fallback) {
    return xp_json_kind(v) == XP_NUMBER ? xp__parse_double(v->text.ptr, v->text.len) : fallback;
}

/* Whether `t` is an optional minus and digits whose value fits in int64_t, and that value. */
static int xp__int64_text(xp_str t, int64_t *out) {
    size_t start = t.len > 0 && t.ptr[0] == '-' ? 1 : 0;
    size_t digits = t.len - start;
    if (digits < 1 || digits > 19) return 0;
    uint64_t magnitude = 0;
    for (size_t i = start; i < t.len; i++) {
        if (t.ptr[i] < '0' || t.ptr[i] > '9') return 0;
        magnitude = magnitude * 10 + (uint64_t)(t.ptr[i] - '0');
    }
    if (magnitude > (uint64_t)INT64_MAX + start) return 0;
    /* Negating in unsigned arithmetic also gives INT64_MIN back for 2^63. */
    *out = start ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return 1;
}

int64_t xp_json_as_integer(const xp_json *v, int64_t fallback) {
    if (xp_json_kind(v) != XP_NUMBER) return fallback;
    int64_t n;
    if (xp__int64_text(v->text, &n)) return n;
    double d = xp__parse_double(v->text.ptr, v->text.len);
    if (d != d) return 0;
    if (d >= 9223372036854775808.0) return INT64_MAX;
    if (d <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)d;
}

const char *xp_json_as_string(const xp_json *v, const char *fallback) {
    xp_kind k = xp_json_kind(v);
    return k == XP_STRING || k == XP_NUMBER ? v->text.ptr : fallback;
}

xp_str xp_json_as_bytes(const xp_json *v) { return xp_json_kind(v) == XP_STRING ? v->text : xp__none; }

const char *xp_json_get_string(const xp_json *obj, const char *key, const char *fallback) {
    return xp_json_as_string(xp_json_get(obj, key), fallback);
}

double xp_json_get_number(const xp_json *obj, const char *key, double fallback) {
    return xp_json_as_number(xp_json_get(obj, key), fallback);
}

int64_t xp_json_get_integer(const xp_json *obj, const char *key, int64_t fallback) {
    return xp_json_as_integer(xp_json_get(obj, key), fallback);
}

int xp_json_get_bool(const xp_json *obj, const char *key, int fallback) {
    return xp_json_as_bool(xp_json_get(obj, key), fallback);
}

static void xp__grow(xp_json *v) {
    if (v->count < v->cap) return;
    size_t cap = v->cap < 4 ? 4 : v->cap * 2;
    xp_json **items = (xp_json **)xp_alloc(cap * sizeof(xp_json *));
    if (v->count > 0) memcpy(items, v->items, v->count * sizeof(xp_json *));
    v->items = items;
    if (v->kind == XP_OBJECT) {
        xp_str *keys = (xp_str *)xp_alloc(cap * sizeof(xp_str));
        if (v->count > 0) memcpy(keys, v->keys, v->count * sizeof(xp_str));
        v->keys = keys;
    }
    v->cap = cap;
}

static void xp__set(xp_json *obj, xp_str key, xp_json *value) {
    long i = xp__index_of(obj, key.ptr, key.len);
    if (i >= 0) {
        obj->items[i] = value;
        return;
    }
    xp__grow(obj);
    obj->keys[obj->count] = key;
    obj->items[obj->count++] = value;
}

xp_json *xp_json_set(xp_json *obj, const char *key, xp_json *value) {
    if (xp_json_kind(obj) == XP_OBJECT) xp__set(obj, xp_str_copy(key, strlen(key)), value == NULL ? xp_json_null() : value);
    return obj;
}

xp_json *xp_json_push(xp_json *arr, xp_json *value) {
    if (xp_json_kind(arr) != XP_ARRAY) return arr;
    xp__grow(arr);
    arr->items[arr->count++] = value == NULL ? xp_json_null() : value;
    return arr;
}

static void xp__remove_at(xp_json *obj, size_t i) {
    memmove(obj->items + i, obj->items + i + 1, (obj->count - i - 1) * sizeof(xp_json *));
    memmove(obj->keys + i, obj->keys + i + 1, (obj->count - i - 1) * sizeof(xp_str));
    obj->count--;
}

int xp_json_remove(xp_json *obj, const char *key) {
    long i = xp__index_of(obj, key, strlen(key));
    if (i < 0) return 0;
    xp__remove_at(obj, (size_t)i);
    return 1;
}

int xp_json_rename(xp_json *obj, const char *from, const char *to) {
    long i = xp__index_of(obj, from, strlen(from));
    if (i < 0) return 0;
    if (strcmp(from, to) == 0) return 1;
    long j = xp__index_of(obj, to, strlen(to));
    obj->keys[i] = xp_str_copy(to, strlen(to));
    if (j >= 0) xp__remove_at(obj, (size_t)j);
    return 1;
}

/* --- numbers ------------------------------------------------------------------------------------
 * wasi-libc's strtod and printf reach for stdio, which imports WASI, so the SDK converts numbers
 * itself, in binary128 (`long double` on wasm32): 113 bits of mantissa leave the 53 of a double
 * correctly rounded except within about 2^-108 of a halfway case. */

/* 10^e for 0 <= e, by squaring. */
static long double xp__pow10(int e) {
    long double result = 1.0L, base = 10.0L;
    while (e > 0) {
        if (e & 1) result *= base;
        base *= base;
        e >>= 1;
    }
    return result;
}

/* The double nearest to the JSON number `text` (which the parser has checked). */
static double xp__parse_double(const char *t, size_t len) {
    size_t i = 0;
    int negative = 0, digits = 0, exp10 = 0, after_point = 0;
    long double m = 0.0L;
    if (i < len && t[i] == '-') negative = 1, i++;
    for (; i < len && ((t[i] >= '0' && t[i] <= '9') || t[i] == '.'); i++) {
        if (t[i] == '.') {
            after_point = 1;
        } else if (digits == 0 && t[i] == '0') {
            exp10 -= after_point;
        } else if (digits < 34) {
            /* Up to 34 digits are exact in binary128; later ones only move the exponent. */
            m = m * 10.0L + (long double)(t[i] - '0');
            digits++;
            exp10 -= after_point;
        } else {
            exp10 += !after_point;
        }
    }
    if (i < len && (t[i] == 'e' || t[i] == 'E')) {
        int sign = 1, e = 0;
        i++;
        if (i < len && (t[i] == '+' || t[i] == '-')) sign = t[i++] == '-' ? -1 : 1;
        for (; i < len; i++) e = e < 100000 ? e * 10 + (t[i] - '0') : e;
        exp10 += sign * e;
    }
    double d;
    if (m == 0.0L || exp10 < -400) {
        d = 0.0;
    } else if (exp10 > 400) {
        d = HUGE_VAL;
    } else {
        d = (double)(exp10 >= 0 ? m * xp__pow10(exp10) : m / xp__pow10(-exp10));
    }
    return negative ? -d : d;
}

/* Writes the decimal digits of `n` (no sign) ending at `end`; returns where they start. */
static char *xp__utoa(uint64_t n, char *end) {
    do {
        *--end = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    return end;
}

xp_json *xp_json_integer(int64_t value) {
    char buf[24];
    char *end = buf + sizeof buf;
    char *p = xp__utoa(value < 0 ? 0 - (uint64_t)value : (uint64_t)value, end);
    if (value < 0) *--p = '-';
    xp_json *v = xp__value(XP_NUMBER);
    v->text = xp_str_copy(p, (size_t)(end - p));
    return v;
}

/* `p` significant digits of x > 0, rounded, and the decimal exponent of the first: x ~ 0.DIGITS * 10^n. */
static uint64_t xp__digits(double x, int p, int *n) {
    int e = (int)floor(log10(x));
    for (;;) {
        int shift = p - 1 - e;
        long double scaled = shift >= 0 ? (long double)x * xp__pow10(shift) : (long double)x / xp__pow10(-shift);
        long double low = xp__pow10(p - 1), high = low * 10.0L;
        if (scaled < low) {
            e--;
            continue;
        }
        if (scaled >= high) {
            e++;
            continue;
        }
        uint64_t digits = (uint64_t)(scaled + 0.5L);
        if ((long double)digits >= high) {
            digits /= 10;
            e++;
        }
        *n = e + 1;
        return digits;
    }
}

/* JavaScript's Number#toString: integers below 2^53 in full, otherwise the fewest digits that read
 * back as the same double, with an exponent below 1e-6 and from 1e21 on. */
xp_json *xp_json_number(double value) {
    if (value != value || value == HUGE_VAL || value == -HUGE_VAL) return xp_json_null();
    if (value == floor(value) && fabs(value) < 9007199254740992.0) return xp_json_integer((int64_t)value);
    double x = fabs(value);
    char digits[24];
    int k = 0, n = 0;
    for (int p = 1; p <= 17; p++) {
        uint64_t d = xp__digits(x, p, &n);
        char *end = digits + sizeof digits;
        char *start = xp__utoa(d, end);
        k = (int)(end - start);
        memmove(digits, start, (size_t)k);
        /* Read back as 0.DIGITS x 10^n. */
        char text[48];
        memcpy(text, digits, (size_t)k);
        text[k] = 'e';
        char *exp_end = text + sizeof text;
        int e = n - k;
        char *exp_start = xp__utoa((uint64_t)(e < 0 ? -e : e), exp_end);
        if (e < 0) *--exp_start = '-';
        memmove(text + k + 1, exp_start, (size_t)(exp_end - exp_start));
        if (xp__parse_double(text, (size_t)(k + 1 + (exp_end - exp_start))) == x) break;
    }
    while (k > 1 && digits[k - 1] == '0') k--;
    xp__buf b = xp__growing();
    if (value < 0) xp__putc(&b, '-');
    if (k <= n && n <= 21) {
        xp__put(&b, digits, (size_t)k);
        for (int i = k; i < n; i++) xp__putc(&b, '0');
    } else if (0 < n && n <= 21) {
        xp__put(&b, digits, (size_t)n);
        xp__putc(&b, '.');
        xp__put(&b, digits + n, (size_t)(k - n));
    } else if (-6 < n && n <= 0) {
        xp__puts(&b, "0.");
        for (int i = n; i < 0; i++) xp__putc(&b, '0');
        xp__put(&b, digits, (size_t)k);
    } else {
        xp__putc(&b, digits[0]);
        if (k > 1) {
            xp__putc(&b, '.');
            xp__put(&b, digits + 1, (size_t)(k - 1));
        }
        char exp_buf[8];
        char *exp_end = exp_buf + sizeof exp_buf;
        int e = n - 1;
        char *exp_start = xp__utoa((uint64_t)(e < 0 ? -e : e), exp_end);
        *--exp_start = e < 0 ? '-' : '+';
        xp__putc(&b, 'e');
        xp__put(&b, exp_start, (size_t)(exp_end - exp_start));
    }
    xp_json *v = xp__value(XP_NUMBER);
    v->text = xp__done(&b);
    return v;
}

/* --- parsing ----------------------------------------------------------------------------------- */

typedef struct xp__parser {
    const unsigned char *b;
    size_t pos, len;
    /* Strings are unescaped over their own literals (b is then writable: the SDK's copy of the input). */
    int in_place;
} xp__parser;

static void xp__space(xp__parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->b[p->pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        p->pos++;
    }
}

/* The first quote, backslash or control byte at or after `from` (or `len`); with `stop_at_ed` also
 * the first 0xED, which may start a surrogate's 3-byte form. */
static size_t xp__scan_plain(const unsigned char *b, size_t from, size_t len, int stop_at_ed) {
    unsigned extra = stop_at_ed ? 0xed : 0x100;
    size_t i = from;
    while (i < len) {
        unsigned c = b[i];
        if (c == '"' || c == '\\' || c < 0x20 || c == extra) break;
        i++;
    }
    return i;
}

static size_t xp__digit_run(xp__parser *p) {
    size_t start = p->pos;
    while (p->pos < p->len && p->b[p->pos] >= '0' && p->b[p->pos] <= '9') p->pos++;
    return p->pos - start;
}

static xp_json *xp__number(xp__parser *p) {
    size_t start = p->pos;
    if (p->pos < p->len && p->b[p->pos] == '-') p->pos++;
    size_t int_start = p->pos;
    size_t int_len = xp__digit_run(p);
    if (int_len == 0 || (int_len > 1 && p->b[int_start] == '0')) return NULL;
    if (p->pos < p->len && p->b[p->pos] == '.') {
        p->pos++;
        if (xp__digit_run(p) == 0) return NULL;
    }
    if (p->pos < p->len && (p->b[p->pos] == 'e' || p->b[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->b[p->pos] == '+' || p->b[p->pos] == '-')) p->pos++;
        if (xp__digit_run(p) == 0) return NULL;
    }
    xp_json *v = xp__value(XP_NUMBER);
    v->text = xp_str_copy(p->b + start, p->pos - start);
    return v;
}

xp_json *xp_json_number_text(const char *text) {
    xp__parser p = {(const unsigned char *)text, 0, strlen(text), 0};
    xp_json *v = xp__number(&p);
    return v != NULL && p.pos == p.len ? v : NULL;
}

static int xp__hex4(xp__parser *p) {
    if (p->pos + 4 > p->len) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p->b[p->pos++], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Writes the UTF-8 of `cp` at `u` and returns its length; a lone surrogate gets the same 3-byte form as
 * any code point of its range. */
static size_t xp__code_point(char *u, uint32_t cp) {
    if (cp < 0x80) {
        u[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The index of the closing quote of the string literal whose text starts at `from` (`len` when none). */
static size_t xp__literal_end(const unsigned char *b, size_t from, size_t len) {
    size_t i = from;
    while (i < len && b[i] != '"') i += b[i] == '\\' ? 2 : 1;
    return i < len ? i : len;
}

/* The unescaped bytes of the string literal at `pos` (ptr NULL when malformed), NUL-terminated. They never
 * outgrow the literal: in place they are written over it (each escape read before its bytes are written, the
 * NUL at most on the closing quote), otherwise into a copy of the literal's size. */
static xp_str xp__string(xp__parser *p) {
    p->pos++; /* the opening quote */
    size_t start = p->pos;
    char *out = (char *)p->b + start;
    if (!p->in_place) {
        size_t plain = xp__scan_plain(p->b, start, p->len, 0);
        if (plain < p->len && p->b[plain] == '"') {
            p->pos = plain + 1;
            return xp_str_copy(p->b + start, plain - start);
        }
        out = (char *)xp_alloc(xp__literal_end(p->b, plain, p->len) - start + 1);
    }
    size_t o = 0;
    for (;;) {
        size_t run = p->pos;
        p->pos = xp__scan_plain(p->b, run, p->len, 0);
        memmove(out + o, p->b + run, p->pos - run);
        o += p->pos - run;
        if (p->pos >= p->len) return xp__none; /* no closing quote */
        unsigned char c = p->b[p->pos++];
        if (c == '"') break;
        if (c != '\\' || p->pos >= p->len) return xp__none; /* a control byte, or a backslash ending the text */
        unsigned char e = p->b[p->pos++];
        if (e == '"' || e == '\\' || e == '/') out[o++] = (char)e;
        else if (e == 'b') out[o++] = '\b';
        else if (e == 'f') out[o++] = '\f';
        else if (e == 'n') out[o++] = '\n';
        else if (e == 'r') out[o++] = '\r';
        else if (e == 't') out[o++] = '\t';
        else if (e == 'u') {
            int cp = xp__hex4(p);
            if (cp < 0) return xp__none;
            if (cp >= 0xd800 && cp < 0xdc00 && p->pos + 6 <= p->len && p->b[p->pos] == '\\' && p->b[p->pos + 1] == 'u') {
                size_t save = p->pos;
                p->pos += 2;
                int low = xp__hex4(p);
                /* Not a low surrogate: the high one stands alone, the next escape is read on its own. */
                if (low >= 0xdc00 && low < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                else p->pos = save;
            }
            o += xp__code_point(out + o, (uint32_t)cp);
        } else {
            return xp__none;
        }
    }
    out[o] = 0;
    xp_str s = {out, o};
    return s;
}

static xp_json *xp__parse_value(xp__parser *p, int depth);

static xp_json *xp__literal(xp__parser *p, const char *word, xp_json *value) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->b + p->pos, word, n) != 0) return NULL;
    p->pos += n;
    return value;
}

static xp_json *xp__array(xp__parser *p, int depth) {
    p->pos++;
    xp_json *arr = xp_json_array();
    xp__space(p);
    if (p->pos < p->len && p->b[p->pos] == ']') {
        p->pos++;
        return arr;
    }
    for (;;) {
        xp_json *item = xp__parse_value(p, depth + 1);
        if (item == NULL) return NULL;
        xp_json_push(arr, item);
        xp__space(p);
        if (p->pos >= p->len) return NULL;
        unsigned char c = p->b[p->pos++];
        if (c == ']') return arr;
        if (c != ',') return NULL;
    }
}

static xp_json *xp__object(xp__parser *p, int depth) {
    p->pos++;
    xp_json *obj = xp_json_object();
    xp__space(p);
    if (p->pos < p->len && p->b[p->pos] == '}') {
        p->pos++;
        return obj;
    }
    for (;;) {
        xp__space(p);
        if (p->pos >= p->len || p->b[p->pos] != '"') return NULL;
        xp_str key = xp__string(p);
        if (key.ptr == NULL) return NULL;
        xp__space(p);
        if (p->pos >= p->len || p->b[p->pos] != ':') return NULL;
        p->pos++;
        xp_json *value = xp__parse_value(p, depth + 1);
        if (value == NULL) return NULL;
        /* A repeated name: the last value wins, at the first one's position. */
        xp__set(obj, key, value);
        xp__space(p);
        if (p->pos >= p->len) return NULL;
        unsigned char c = p->b[p->pos++];
        if (c == '}') return obj;
        if (c != ',') return NULL;
    }
}

static xp_json *xp__parse_value(xp__parser *p, int depth) {
    if (depth > XP_JSON_MAX_DEPTH) return NULL;
    xp__space(p);
    if (p->pos >= p->len) return NULL;
    switch (p->b[p->pos]) {
    case '{':
        return xp__object(p, depth);
    case '[':
        return xp__array(p, depth);
    case '"': {
        xp_str s = xp__string(p);
        if (s.ptr == NULL) return NULL;
        xp_json *v = xp__value(XP_STRING);
        v->text = s;
        return v;
    }
    case 't':
        return xp__literal(p, "true", xp_json_bool(1));
    case 'f':
        return xp__literal(p, "false", xp_json_bool(0));
    case 'n':
        return xp__literal(p, "null", xp_json_null());
    default:
        return xp__number(p);
    }
}

static xp_json *xp__parse(const void *text, size_t len, int in_place) {
    xp__parser p = {(const unsigned char *)text, 0, len, in_place};
    xp_json *v = xp__parse_value(&p, 0);
    if (v == NULL) return NULL;
    xp__space(&p);
    return p.pos == len ? v : NULL;
}

xp_json *xp_json_parse(const void *text, size_t len) { return xp__parse(text, len, 0); }

/* --- writing ----------------------------------------------------------------------------------- */

static void xp__escape(xp__buf *out, unsigned unit) {
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', hex[(unit >> 12) & 15], hex[(unit >> 8) & 15], hex[(unit >> 4) & 15], hex[unit & 15]};
    xp__put(out, e, 6);
}

/* A JSON string literal of UTF-8 bytes: escapes quote, backslash and control bytes, and writes a
 * surrogate's 3-byte form (from a lone \ud800 escape) as that escape again. */
static void xp__write_string(xp__buf *out, const void *bytes, size_t n) {
    const unsigned char *b = (const unsigned char *)bytes;
    xp__putc(out, '"');
    size_t run = 0;
    for (size_t i = xp__scan_plain(b, 0, n, 1); i < n; i = xp__scan_plain(b, i + 1, n, 1)) {
        unsigned c = b[i];
        if (c == 0xed) {
            if (i + 2 >= n || b[i + 1] < 0xa0 || b[i + 1] > 0xbf) continue;
            xp__put(out, b + run, i - run);
            xp__escape(out, 0xd000 | (unsigned)(b[i + 1] & 0x3f) << 6 | (b[i + 2] & 0x3f));
            i += 2;
            run = i + 1;
            continue;
        }
        xp__put(out, b + run, i - run);
        run = i + 1;
        if (c == '"') xp__puts(out, "\\\"");
        else if (c == '\\') xp__puts(out, "\\\\");
        else if (c == '\n') xp__puts(out, "\\n");
        else if (c == '\r') xp__puts(out, "\\r");
        else if (c == '\t') xp__puts(out, "\\t");
        else xp__escape(out, c);
    }
    xp__put(out, b + run, n - run);
    xp__putc(out, '"');
}

static void xp__write(xp__buf *out, const xp_json *v) {
    switch (xp_json_kind(v)) {
    case XP_NULL:
        xp__puts(out, "null");
        break;
    case XP_BOOL:
        xp__puts(out, v->flag ? "true" : "false");
        break;
    case XP_NUMBER:
        xp__put(out, v->text.ptr, v->text.len);
        break;
    case XP_STRING:
        xp__write_string(out, v->text.ptr, v->text.len);
        break;
    case XP_ARRAY:
        xp__putc(out, '[');
        for (size_t i = 0; i < v->count; i++) {
            if (i > 0) xp__putc(out, ',');
            xp__write(out, v->items[i]);
        }
        xp__putc(out, ']');
        break;
    case XP_OBJECT:
        xp__putc(out, '{');
        for (size_t i = 0; i < v->count; i++) {
            if (i > 0) xp__putc(out, ',');
            xp__write_string(out, v->keys[i].ptr, v->keys[i].len);
            xp__putc(out, ':');
            xp__write(out, v->items[i]);
        }
        xp__putc(out, '}');
        break;
    }
}

xp_str xp_json_write(const xp_json *v) {
    /* Measured first: one allocation of the text's size, where growing would leave each smaller step
     * behind in the arena (for a body, about twice its size). */
    xp__buf count = xp__counter();
    xp__write(&count, v);
    xp__buf b = xp__sized(count.len);
    xp__write(&b, v);
    return xp__done(&b);
}

xp_str xp_json_quote(const void *bytes, size_t len) {
    xp__buf b = xp__growing();
    xp__write_string(&b, bytes, len);
    return xp__done(&b);
}

/* --- input ------------------------------------------------------------------------------------- */

static int xp__name_is(xp_str name, const char *wanted) {
    size_t n = strlen(wanted);
    if (name.len != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char a = name.ptr[i], b = wanted[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (char)(b + 32);
        if (a != b) return 0;
    }
    return 1;
}

size_t xp_header_find(const xp_headers *h, const char *name, size_t from) {
    for (size_t i = from; i < h->count; i++) {
        if (xp__name_is(h->items[i].name, name)) return i;
    }
    return h->count;
}

xp_str xp_header_bytes(const xp_header *line) { return line->raw.ptr != NULL ? line->raw : line->value; }

const char *xp_header_get(const xp_headers *h, const char *name) {
    size_t i = xp_header_find(h, name, 0);
    return i < h->count ? h->items[i].value.ptr : NULL;
}

xp_str xp_header_get_bytes(const xp_headers *h, const char *name) {
    size_t i = xp_header_find(h, name, 0);
    return i < h->count ? xp_header_bytes(&h->items[i]) : xp__none;
}

int xp_header_has(const xp_headers *h, const char *name) { return xp_header_find(h, name, 0) < h->count; }

xp_json *xp_body_json(const xp_body *body) {
    return body != NULL && body->is_text ? xp_json_parse(body->bytes.ptr, body->bytes.len) : NULL;
}

xp_str xp_path_only(const xp_request *request) {
    const char *q = (const char *)memchr(request->path.ptr, '?', request->path.len);
    xp_str s = request->path;
    if (q != NULL) s = xp_str_copy(s.ptr, (size_t)(q - s.ptr));
    return s;
}

const char *xp_input_attribute(const xp_input *input, const char *name) {
    return xp_json_get_string(input->attributes, name, NULL);
}

static xp_str xp__text_of(const xp_json *obj, const char *key) {
    xp_str s = xp_json_as_bytes(xp_json_get(obj, key));
    if (s.ptr == NULL) s = xp__cstr("");
    return s;
}

static xp_headers xp__headers(const xp_json *list) {
    xp_headers h = {NULL, 0};
    size_t n = xp_json_length(list);
    if (n == 0) return h;
    xp_header *items = (xp_header *)xp_alloc(n * sizeof(xp_header));
    for (size_t i = 0; i < n; i++) {
        const xp_json *item = xp_json_at(list, i);
        items[i].name = xp__text_of(item, "name");
        items[i].value = xp__text_of(item, "value");
        items[i].raw = xp__none;
        xp_str raw = xp_json_as_bytes(xp_json_get(item, "raw_value"));
        if (raw.ptr != NULL && !xp_base64_decode(raw.ptr, raw.len, &items[i].raw)) items[i].raw = xp__none;
    }
    h.items = items;
    h.count = n;
    return h;
}

/* The contract's body object: its text, or its data decoded where its base64 was (the value is the SDK's
 * own, parsed from the input or a host function's answer, and read only here). */
static const xp_body *xp__body(const xp_json *v) {
    if (xp_json_kind(v) != XP_OBJECT) return NULL;
    xp_body *body = (xp_body *)xp_alloc(sizeof(xp_body));
    xp_str text = xp_json_as_bytes(xp_json_get(v, "text"));
    xp_str data = xp_json_as_bytes(xp_json_get(v, "data"));
    body->is_text = 1;
    body->bytes = xp__cstr("");
    if (text.ptr != NULL) {
        body->bytes = text;
    } else if (data.ptr != NULL) {
        char *decoded = (char *)data.ptr;
        size_t len;
        body->is_text = 0;
        if (xp__base64_decode_to(data.ptr, data.len, decoded, &len)) {
            decoded[len] = 0;
            body->bytes.ptr = decoded;
            body->bytes.len = len;
        }
    }
    return body;
}

/* A header list that is present (the trailers of a trailers phase), or NULL. */
static const xp_headers *xp__headers_if_any(const xp_json *list) {
    if (list == NULL) return NULL;
    xp_headers *h = (xp_headers *)xp_alloc(sizeof(xp_headers));
    *h = xp__headers(list);
    return h;
}

static const xp_json *xp__object_or_empty(xp_json *v) { return xp_json_kind(v) == XP_OBJECT ? v : xp_json_object(); }

/* Parses `bytes`, which the SDK owns, in place: the bodies' text stays where it was read. */
static int xp__input_parse_in_place(char *bytes, size_t len, xp_input *input) {
    memset(input, 0, sizeof *input);
    xp_json *root = xp__parse(bytes, len, 1);
    if (xp_json_kind(root) != XP_OBJECT) return 0;
    input->phase = xp__text_of(root, "phase");
    input->plugin_name = xp__text_of(root, "plugin_name");
    const xp_json *req = xp_json_get(root, "request");
    input->request.method = xp__text_of(req, "method");
    input->request.path = xp__text_of(req, "path");
    input->request.scheme = xp__text_of(req, "scheme");
    input->request.authority = xp__text_of(req, "authority");
    input->request.headers = xp__headers(xp_json_get(req, "headers"));
    input->request.body = xp__body(xp_json_get(req, "body"));
    input->request.trailers = xp__headers_if_any(xp_json_get(req, "trailers"));
    input->response = NULL;
    const xp_json *resp = xp_json_get(root, "response");
    if (resp != NULL) {
        xp_response *r = (xp_response *)xp_alloc(sizeof(xp_response));
        r->status = (int)xp_json_get_integer(resp, "status", 0);
        r->headers = xp__headers(xp_json_get(resp, "headers"));
        r->body = xp__body(xp_json_get(resp, "body"));
        r->trailers = xp__headers_if_any(xp_json_get(resp, "trailers"));
        input->response = r;
    }
    input->attributes = xp__object_or_empty(xp_json_get(root, "attributes"));
    input->metadata = xp__object_or_empty(xp_json_get(root, "metadata"));
    input->state = xp__body(xp_json_get(root, "state"));
    input->route = xp__object_or_empty(xp_json_get(root, "route"));
    input->end_of_stream = xp_json_get_bool(root, "end_of_stream", 0);
    input->chunk_index = (uint32_t)xp_json_get_integer(root, "chunk_index", 0);
    return 1;
}

int xp_input_parse(const void *bytes, size_t len, xp_input *input) {
    return xp__input_parse_in_place((char *)xp_str_copy(bytes, len).ptr, len, input);
}

xp_str xp_input_state(const xp_input *input) { return input->state != NULL ? input->state->bytes : xp__cstr(""); }

/* --- output ------------------------------------------------------------------------------------ */

typedef struct xp__pair {
    xp_str name, value;
    struct xp__pair *next;
} xp__pair;

/* Pairs in insertion order: a list with a tail pointer. */
typedef struct xp__pairs {
    xp__pair *head, **tail;
} xp__pairs;

struct xp_immediate {
    int status, grpc_status;
    xp__pairs headers;
    xp_str body, details;
};

struct xp_output {
    xp__pairs sets, appends, removes;
    xp_str body, state;
    xp_immediate *immediate;
    xp_json *metadata;
};

static void xp__add(xp__pairs *list, const char *name, const void *value, size_t len) {
    xp__pair *p = (xp__pair *)xp_alloc(sizeof(xp__pair));
    p->name = xp_str_copy(name, strlen(name));
    for (size_t i = 0; i < p->name.len; i++) {
        char c = p->name.ptr[i];
        if (c >= 'A' && c <= 'Z') ((char *)p->name.ptr)[i] = (char)(c + 32);
    }
    p->value = value == NULL ? xp__none : xp_str_copy(value, len);
    p->next = NULL;
    if (list->tail == NULL) list->tail = &list->head;
    *list->tail = p;
    list->tail = &p->next;
}

xp_output *xp_output_new(void) {
    xp_output *o = (xp_output *)xp_alloc(sizeof(xp_output));
    memset(o, 0, sizeof *o);
    return o;
}

void xp_set_header(xp_output *out, const char *name, const char *value) { xp__add(&out->sets, name, value, strlen(value)); }
void xp_append_header(xp_output *out, const char *name, const char *value) { xp__add(&out->appends, name, value, strlen(value)); }

void xp_set_header_bytes(xp_output *out, const char *name, const void *value, size_t len) {
    xp__add(&out->sets, name, value == NULL ? "" : value, len);
}

void xp_append_header_bytes(xp_output *out, const char *name, const void *value, size_t len) {
    xp__add(&out->appends, name, value == NULL ? "" : value, len);
}

void xp_remove_header(xp_output *out, const char *name) { xp__add(&out->removes, name, NULL, 0); }

void xp_set_body(xp_output *out, const void *bytes, size_t len) { out->body = xp_str_copy(bytes, len); }
void xp_set_body_text(xp_output *out, const char *text) { xp_set_body(out, text, strlen(text)); }
/* xp_json_write's text is the call's already: kept, not copied. */
void xp_set_body_json(xp_output *out, const xp_json *value) { out->body = xp_json_write(value); }

void xp_set_state(xp_output *out, const void *bytes, size_t len) { out->state = xp_str_copy(bytes, len); }
void xp_set_state_text(xp_output *out, const char *text) { xp_set_state(out, text, strlen(text)); }

void xp_metadata(xp_output *out, const char *key, xp_json *value) {
    if (out->metadata == NULL) out->metadata = xp_json_object();
    xp_json_set(out->metadata, key, value);
}

xp_immediate *xp_respond(xp_output *out, int status) {
    xp_immediate *r = (xp_immediate *)xp_alloc(sizeof(xp_immediate));
    memset(r, 0, sizeof *r);
    r->status = status;
    r->grpc_status = -1;
    out->immediate = r;
    return r;
}

void xp_immediate_header(xp_immediate *r, const char *name, const char *value) { xp__add(&r->headers, name, value, strlen(value)); }

void xp_immediate_header_bytes(xp_immediate *r, const char *name, const void *value, size_t len) {
    xp__add(&r->headers, name, value == NULL ? "" : value, len);
}

void xp_immediate_text(xp_immediate *r, const char *text) {
    r->body = xp_str_copy(text, strlen(text));
    xp_immediate_header(r, "content-type", "text/plain; charset=utf-8");
}

void xp_immediate_json(xp_immediate *r, const xp_json *body) {
    r->body = xp_json_write(body);
    xp_immediate_header(r, "content-type", "application/json");
}

void xp_immediate_bytes(xp_immediate *r, const void *bytes, size_t len) { r->body = xp_str_copy(bytes, len); }
void xp_immediate_details(xp_immediate *r, const char *details) { r->details = xp_str_copy(details, strlen(details)); }
void xp_immediate_grpc_status(xp_immediate *r, int code) { r->grpc_status = code; }

static void xp__write_pairs(xp__buf *w, const xp__pairs *list) {
    xp__putc(w, '[');
    for (const xp__pair *p = list->head; p != NULL; p = p->next) {
        if (p != list->head) xp__putc(w, ',');
        xp__puts(w, "{\"name\":");
        xp__write_string(w, p->name.ptr, p->name.len);
        /* Text travels as text, so the output stays readable; only other bytes need raw_value. */
        if (xp_is_utf8(p->value.ptr, p->value.len)) {
            xp__puts(w, ",\"value\":");
            xp__write_string(w, p->value.ptr, p->value.len);
        } else {
            xp__puts(w, ",\"raw_value\":\"");
            xp__put_base64(w, p->value.ptr, p->value.len);
            xp__putc(w, '"');
        }
        xp__putc(w, '}');
    }
    xp__putc(w, ']');
}

static void xp__write_body(xp__buf *w, xp_str bytes) {
    if (xp_is_utf8(bytes.ptr, bytes.len)) {
        xp__puts(w, "{\"text\":");
        xp__write_string(w, bytes.ptr, bytes.len);
    } else {
        xp__puts(w, "{\"data\":\"");
        xp__put_base64(w, bytes.ptr, bytes.len);
        xp__putc(w, '"');
    }
    xp__putc(w, '}');
}

static void xp__int(xp__buf *w, int64_t n) {
    xp_str s = xp_json_integer(n)->text;
    xp__put(w, s.ptr, s.len);
}

static int xp__output_empty(const xp_output *out) {
    return out->sets.head == NULL && out->appends.head == NULL && out->removes.head == NULL && out->body.ptr == NULL &&
           out->immediate == NULL && xp_json_length(out->metadata) == 0 && out->state.ptr == NULL;
}

/* Starts the next member of the output object. */
static void xp__member(xp__buf *w, int *first, const char *name) {
    if (!*first) xp__putc(w, ',');
    *first = 0;
    xp__puts(w, name);
}

/* The output JSON onto `w`; nothing when nothing changed. */
static void xp__write_output(xp__buf *w, const xp_output *out) {
    if (xp__output_empty(out)) return;
    int first = 1;
    xp__putc(w, '{');
    if (out->sets.head != NULL || out->appends.head != NULL || out->removes.head != NULL) {
        xp__member(w, &first, "\"headers\":{\"set\":");
        xp__write_pairs(w, &out->sets);
        xp__puts(w, ",\"append\":");
        xp__write_pairs(w, &out->appends);
        xp__puts(w, ",\"remove\":[");
        for (const xp__pair *p = out->removes.head; p != NULL; p = p->next) {
            if (p != out->removes.head) xp__putc(w, ',');
            xp__write_string(w, p->name.ptr, p->name.len);
        }
        xp__puts(w, "]}");
    }
    if (out->body.ptr != NULL) {
        xp__member(w, &first, "\"body\":");
        xp__write_body(w, out->body);
    }
    const xp_immediate *r = out->immediate;
    if (r != NULL) {
        xp__member(w, &first, "\"immediate_response\":{\"status\":");
        xp__int(w, r->status);
        xp__puts(w, ",\"headers\":");
        xp__write_pairs(w, &r->headers);
        if (r->body.ptr != NULL) {
            xp__puts(w, ",\"body\":");
            xp__write_body(w, r->body);
        }
        if (r->details.len > 0) {
            xp__puts(w, ",\"details\":");
            xp__write_string(w, r->details.ptr, r->details.len);
        }
        if (r->grpc_status >= 0) {
            xp__puts(w, ",\"grpc_status\":");
            xp__int(w, r->grpc_status);
        }
        xp__putc(w, '}');
    }
    if (xp_json_length(out->metadata) > 0) {
        xp__member(w, &first, "\"dynamic_metadata\":");
        xp__write(w, out->metadata);
    }
    if (out->state.ptr != NULL) {
        xp__member(w, &first, "\"state\":");
        xp__write_body(w, out->state);
    }
    xp__putc(w, '}');
}

static size_t xp__output_len(const xp_output *out) {
    xp__buf count = xp__counter();
    xp__write_output(&count, out);
    return count.len;
}

xp_str xp_output_bytes(const xp_output *out) {
    xp__buf w = xp__sized(xp__output_len(out));
    xp__write_output(&w, out);
    return xp__done(&w);
}

/* Sets the output as the call's output: measured, then written once straight into Extism memory, so the
 * output (a whole body, perhaps) needs no room in the plugin's memory. */
static void xp__output_write(const xp_output *out) {
    size_t len = xp__output_len(out);
    if (len == 0) return;
    char staged[1024];
    uint64_t offset = xp__alloc(len);
    xp__buf w = {staged, 0, sizeof staged, XP__EXTISM, offset};
    xp__write_output(&w, out);
    xp__flush(&w);
    xp__output_set(offset, len);
}

/* --- config, host functions, run --------------------------------------------------------------- */

const xp_json *xp_config(void) {
    static const xp_json *config;
    if (config != NULL) return config;
    /* Parsed into the instance's arena: the config never changes under a running instance. */
    xp__arena_now = &xp__instance_arena;
    uint64_t key = xp__cstr_to_extism("config");
    uint64_t offset = xp__config_get(key);
    xp__free(key);
    /* Extism owns config values: read, never freed. */
    xp_json *parsed = NULL;
    if (offset != 0) {
        xp_str text = xp__from_extism(offset);
        parsed = xp_json_parse(text.ptr, text.len);
    }
    config = xp__object_or_empty(parsed);
    xp__arena_now = &xp__call_arena;
    return config;
}

xp_str xp_kv_get(const char *key) {
    uint64_t k = xp__cstr_to_extism(key);
    xp_str value = xp__take_extism(xp__kv_get(k));
    xp__free(k);
    return value;
}

int xp_kv_set_bytes(const char *key, const void *value, size_t len, int64_t ttl_ms) {
    uint64_t k = xp__cstr_to_extism(key), v = xp__to_extism(value, len);
    int ok = xp__kv_set(k, v, ttl_ms) != 0;
    xp__free(k);
    xp__free(v);
    return ok;
}

int xp_kv_set(const char *key, const char *value, int64_t ttl_ms) { return xp_kv_set_bytes(key, value, strlen(value), ttl_ms); }

int xp_kv_delete(const char *key) {
    uint64_t k = xp__cstr_to_extism(key);
    int ok = xp__kv_delete(k) != 0;
    xp__free(k);
    return ok;
}

int64_t xp_kv_incr(const char *key, int64_t delta, int64_t ttl_ms) {
    uint64_t k = xp__cstr_to_extism(key);
    int64_t n = xp__kv_incr(k, delta, ttl_ms);
    xp__free(k);
    return n;
}

int xp_kv_cas(const char *key, const char *expected, const char *value, int64_t ttl_ms) {
    uint64_t k = xp__cstr_to_extism(key);
    uint64_t e = expected == NULL ? 0 : xp__cstr_to_extism(expected);
    uint64_t v = xp__cstr_to_extism(value);
    int ok = xp__kv_cas(k, e, v, ttl_ms) != 0;
    xp__free(k);
    if (e != 0) xp__free(e);
    xp__free(v);
    return ok;
}

int64_t xp_now_ms(void) { return xp__now_ms(); }

void xp_log(int level, const char *message) {
    uint64_t m = xp__cstr_to_extism(message);
    xp__log(level, m);
    xp__free(m);
}

static xp_http_response xp__http_failed(const char *kind, const char *message) {
    xp_http_response r;
    memset(&r, 0, sizeof r);
    r.body = xp__cstr("");
    r.url = xp__cstr("");
    r.error = kind;
    r.message = message;
    return r;
}

xp_http_response xp_http_request(const char *method, const char *url, const char *const *headers,
                                 const void *body, size_t body_len, int timeout_ms, int max_redirects) {
    xp_json *req = xp_json_object();
    xp_json_set(req, "method", xp_json_string(method));
    xp_json_set(req, "url", xp_json_string(url));
    xp_json *list = xp_json_array();
    for (size_t i = 0; headers != NULL && headers[i] != NULL && headers[i + 1] != NULL; i += 2) {
        xp_json *h = xp_json_object();
        xp_json_set(h, "name", xp_json_string(headers[i]));
        xp_json_set(h, "value", xp_json_string(headers[i + 1]));
        xp_json_push(list, h);
    }
    xp_json_set(req, "headers", list);
    if (body != NULL) {
        xp_json *b = xp_json_object();
        if (xp_is_utf8(body, body_len)) {
            xp_json_set(b, "text", xp_json_string_n(body, body_len));
        } else {
            xp_str b64 = xp_base64_encode(body, body_len);
            xp_json_set(b, "data", xp_json_string_n(b64.ptr, b64.len));
        }
        xp_json_set(req, "body", b);
    }
    if (timeout_ms > 0) xp_json_set(req, "timeout_ms", xp_json_integer(timeout_ms));
    if (max_redirects >= 0) xp_json_set(req, "max_redirects", xp_json_integer(max_redirects));

    xp_str text = xp_json_write(req);
    uint64_t r = xp__to_extism(text.ptr, text.len);
    xp_str answer_text = xp__take_extism(xp__http_request(r));
    xp__free(r);
    if (answer_text.ptr == NULL) return xp__http_failed(XP_HTTP_INTERNAL, "extproc_http_request failed; see the server log");
    const xp_json *answer = xp_json_parse(answer_text.ptr, answer_text.len);
    if (answer == NULL) return xp__http_failed(XP_HTTP_INTERNAL, "extproc_http_request answered no JSON");
    const xp_json *error = xp_json_get(answer, "error");
    if (error != NULL) {
        return xp__http_failed(xp_json_get_string(error, "kind", ""), xp_json_get_string(error, "message", ""));
    }
    xp_http_response resp = xp__http_failed(NULL, NULL);
    resp.status = (int)xp_json_get_integer(answer, "status", 0);
    resp.headers = xp__headers(xp_json_get(answer, "headers"));
    const xp_body *received = xp__body(xp_json_get(answer, "body"));
    if (received != NULL) resp.body = received->bytes;
    resp.url = xp__text_of(answer, "url");
    return resp;
}

xp_http_response xp_http_get(const char *url) { return xp_http_request("GET", url, NULL, NULL, 0, 0, -1); }

xp_http_response xp_http_post(const char *url, const char *body) {
    return xp_http_request("POST", url, NULL, body, strlen(body), 0, -1);
}

xp_str xp_form_encode(const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    xp__buf b = xp__growing();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        int unreserved = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-' ||
                         c == '.' || c == '_' || c == '~';
        if (unreserved) {
            xp__putc(&b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            xp__put(&b, e, 3);
        }
    }
    return xp__done(&b);
}

int xp_run(xp_handler handler) {
    xp_input input;
    xp_str bytes = xp_raw_input();
    /* Extism's copy of the input is not read again: freed, the output can take its place instead of growing
     * Extism's memory by its size. */
    xp__free(xp__input_offset());
    int rc;
    if (!xp__input_parse_in_place((char *)bytes.ptr, bytes.len, &input)) {
        rc = xp_fail("extproc sdk: the input is not a JSON object (is the plugin configured with encoding: protobuf?)");
    } else {
        xp_output *out = xp_output_new();
        rc = handler(&input, out);
        if (rc == 0) xp__output_write(out);
    }
    xp_call_end();
    return rc;
}

const char *xp_phase_name(unsigned phase) {
    static const char *const names[] = {
        "request_headers",  "request_body_chunk",  "request_body",  "generate_response", "request_trailers",
        "response_headers", "response_body_chunk", "response_body", "response_trailers",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (phase == 1u << i) return names[i];
    }
    return NULL;
}

int xp_declare_phases(unsigned phases) {
    xp__buf w = xp__growing();
    xp__puts(&w, "{\"phases\":[");
    int first = 1;
    for (unsigned phase = 1; xp_phase_name(phase) != NULL; phase <<= 1) {
        if (!(phases & phase)) continue;
        if (!first) xp__putc(&w, ',');
        first = 0;
        xp__write_string(&w, xp_phase_name(phase), strlen(xp_phase_name(phase)));
    }
    xp__puts(&w, "]}");
    xp_raw_output(w.p, w.len);
    xp_call_end();
    return 0;
}
