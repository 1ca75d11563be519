/*
 * weir_batch.h: reading and building Weir batches in C.
 *
 * A batch crossing the WIT boundary is Arrow's columnar format laid out as
 * WIT records: per column a validity bitmap (least-significant bit first,
 * set = valid) and the Arrow buffers, little-endian, from offset 0. This
 * header reads and writes fixed-width columns, appends columns to a batch,
 * reports errors and reads a stage's JSON `config` object.
 *
 * Include the header `wit-bindgen c` generated for your world first (for a
 * transform, "transform_plugin.h"); `weir plugin build` generates it and puts
 * both on the include path.
 *
 * Memory: the bindings hand a plugin ownership of its arguments and free
 * what it returns after the call (with free()); so everything put into a
 * returned batch or error must come from malloc(), and moving the input's
 * columns into the output (as weir_batch_append_column() allows) is the
 * cheap way to pass them through.
 */
#ifndef WEIR_BATCH_H
#define WEIR_BATCH_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* malloc() that never returns NULL: running out of memory traps the plugin. */
static inline void *weir_alloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) abort();
  return p;
}

static inline void *weir_realloc(void *old, size_t bytes) {
  void *p = realloc(old, bytes ? bytes : 1);
  if (!p) abort();
  return p;
}

/* Whether the WIT string (ptr, len) equals the C string s. */
static inline bool weir_str_eq(const uint8_t *ptr, size_t len, const char *s) {
  return strlen(s) == len && memcmp(ptr, s, len) == 0;
}

/* The position of column `name` in the batch, or -1. */
static inline ptrdiff_t weir_column_index(const weir_plugin_types_batch_t *batch,
                                          const char *name) {
  for (size_t i = 0; i < batch->fields.len; i++) {
    const weir_plugin_types_field_t *f = &batch->fields.ptr[i];
    if (weir_str_eq(f->name.ptr, f->name.len, name)) return (ptrdiff_t)i;
  }
  return -1;
}

/* Arrow's name for a type tag (WEIR_PLUGIN_TYPES_DATA_TYPE_*). */
static inline const char *weir_type_name(uint8_t tag) {
  static const char *const names[] = {
      "Null",    "Boolean", "Int8",    "Int16",   "Int32",     "Int64",       "UInt8",
      "UInt16",  "UInt32",  "UInt64",  "Float32", "Float64",   "Utf8",        "LargeUtf8",
      "Binary",  "LargeBinary", "Date32", "Date64", "Timestamp", "Decimal128"};
  return tag < sizeof names / sizeof names[0] ? names[tag] : "an unknown type";
}

/* Whether row `row` of the column holds a value (is not null). */
static inline bool weir_is_valid(const weir_plugin_types_column_t *column, uint64_t row) {
  if (!column->validity.is_some) return true;
  return (column->validity.val.ptr[row >> 3] >> (row & 7)) & 1;
}

/* Fixed-width values (buffer 0); memcpy because WIT lists of bytes carry no
 * alignment promise. Read only valid rows: a null row's bytes are unspecified. */
static inline double weir_get_f64(const weir_plugin_types_column_t *column, uint64_t row) {
  double v;
  memcpy(&v, column->buffers.ptr[0].ptr + row * sizeof v, sizeof v);
  return v;
}

static inline int64_t weir_get_i64(const weir_plugin_types_column_t *column, uint64_t row) {
  int64_t v;
  memcpy(&v, column->buffers.ptr[0].ptr + row * sizeof v, sizeof v);
  return v;
}

/* A column of `len` zeroed fixed-width values of `width` bytes, all valid. */
static inline weir_plugin_types_column_t weir_column_fixed(uint64_t len, size_t width) {
  weir_plugin_types_column_t column;
  memset(&column, 0, sizeof column);
  column.len = len;
  column.buffers.len = 1;
  column.buffers.ptr = weir_alloc(sizeof *column.buffers.ptr);
  column.buffers.ptr[0].len = (size_t)len * width;
  column.buffers.ptr[0].ptr = weir_alloc((size_t)len * width);
  memset(column.buffers.ptr[0].ptr, 0, (size_t)len * width);
  return column;
}

static inline void weir_set_f64(weir_plugin_types_column_t *column, uint64_t row, double v) {
  memcpy(column->buffers.ptr[0].ptr + row * sizeof v, &v, sizeof v);
}

static inline void weir_set_i64(weir_plugin_types_column_t *column, uint64_t row, int64_t v) {
  memcpy(column->buffers.ptr[0].ptr + row * sizeof v, &v, sizeof v);
}

/* Marks a row null (the bitmap is created, all valid, on the first null). */
static inline void weir_set_null(weir_plugin_types_column_t *column, uint64_t row) {
  if (!column->validity.is_some) {
    size_t bytes = (size_t)(column->len + 7) / 8;
    column->validity.is_some = true;
    column->validity.val.len = bytes;
    column->validity.val.ptr = weir_alloc(bytes);
    memset(column->validity.val.ptr, 0xff, bytes);
  }
  uint8_t bit = (uint8_t)(1u << (row & 7));
  if (column->validity.val.ptr[row >> 3] & bit) {
    column->validity.val.ptr[row >> 3] &= (uint8_t)~bit;
    column->null_count++;
  }
}

/* Appends a column (moved into the batch) named `name` of a type without
 * parameters (WEIR_PLUGIN_TYPES_DATA_TYPE_FLOAT64, ..._INT64, ...). */
static inline void weir_batch_append_column(weir_plugin_types_batch_t *batch, const char *name,
                                            uint8_t type_tag, bool nullable,
                                            weir_plugin_types_column_t column) {
  size_t n = batch->fields.len;
  batch->fields.ptr = weir_realloc(batch->fields.ptr, (n + 1) * sizeof *batch->fields.ptr);
  batch->columns.ptr = weir_realloc(batch->columns.ptr, (n + 1) * sizeof *batch->columns.ptr);
  weir_plugin_types_field_t *field = &batch->fields.ptr[n];
  memset(field, 0, sizeof *field);
  field->name.len = strlen(name);
  field->name.ptr = weir_alloc(field->name.len);
  memcpy(field->name.ptr, name, field->name.len);
  field->data_type.tag = type_tag;
  field->nullable = nullable;
  batch->columns.ptr[n] = column;
  batch->fields.len = n + 1;
  batch->columns.len = n + 1;
}

/* Fills a plugin error (kind WEIR_PLUGIN_TYPES_ERROR_KIND_CONFIG, _INPUT or
 * _INTERNAL) with a printf-formatted message; return false after it. */
static inline void weir_error(weir_plugin_types_plugin_error_t *err, uint8_t kind,
                              const char *format, ...) {
  va_list args;
  va_start(args, format);
  int n = vsnprintf(NULL, 0, format, args);
  va_end(args);
  char *message = weir_alloc((size_t)(n > 0 ? n : 0) + 1);
  va_start(args, format);
  vsnprintf(message, (size_t)(n > 0 ? n : 0) + 1, format, args);
  va_end(args);
  err->kind = kind;
  err->message.ptr = (uint8_t *)message;
  err->message.len = (size_t)(n > 0 ? n : 0);
}

/* ---- The stage's `config`: a JSON object, read member by member. ---- */

/* What a member's value is. */
enum weir_json_kind {
  WEIR_JSON_STRING, /* `string` holds it, NUL-terminated (UTF-8) */
  WEIR_JSON_NUMBER, /* `number` holds it */
  WEIR_JSON_BOOL,   /* `boolean` holds it */
  WEIR_JSON_NULL,
  WEIR_JSON_OTHER /* an object or array, skipped */
};

/* One member of the object: its key and value. Free with weir_json_member_free(). */
typedef struct {
  char *key;
  enum weir_json_kind kind;
  char *string;
  double number;
  bool boolean;
} weir_json_member;

/* A cursor over the members of a JSON object. */
typedef struct {
  const char *at;
  const char *end;
  bool first;
} weir_json_object;

static inline void weir_json_member_free(weir_json_member *m) {
  free(m->key);
  free(m->string);
  m->key = NULL;
  m->string = NULL;
}

static inline void weir_json_space(weir_json_object *o) {
  while (o->at < o->end && (*o->at == ' ' || *o->at == '\t' || *o->at == '\n' || *o->at == '\r'))
    o->at++;
}

static inline int weir_json_hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Reads four hex digits after "\u"; -1 if they are not. */
static inline long weir_json_u16(weir_json_object *o) {
  if (o->end - o->at < 4) return -1;
  long v = 0;
  for (int i = 0; i < 4; i++) {
    int d = weir_json_hex(o->at[i]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  o->at += 4;
  return v;
}

/* Parses a string at the cursor (on its opening quote) into a malloc'd,
 * NUL-terminated UTF-8 copy; NULL if it is not a valid JSON string. */
static inline char *weir_json_string(weir_json_object *o) {
  if (o->at >= o->end || *o->at != '"') return NULL;
  o->at++;
  /* Escapes never make the text longer (\uXXXX is 6 bytes for <= 4). */
  char *out = weir_alloc((size_t)(o->end - o->at) + 1);
  size_t n = 0;
  while (o->at < o->end) {
    unsigned char c = (unsigned char)*o->at++;
    if (c == '"') {
      out[n] = '\0';
      return out;
    }
    if (c < 0x20) break;
    if (c != '\\') {
      out[n++] = (char)c;
      continue;
    }
    if (o->at >= o->end) break;
    char e = *o->at++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (simple && e) {
      static const char decoded[] = "\"\\/\b\f\n\r\t";
      out[n++] = decoded[simple - "\"\\/bfnrt"];
      continue;
    }
    if (e != 'u') break;
    long cp = weir_json_u16(o);
    if (cp < 0) break;
    if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
      if (o->end - o->at < 2 || o->at[0] != '\\' || o->at[1] != 'u') break;
      o->at += 2;
      long low = weir_json_u16(o);
      if (low < 0xDC00 || low > 0xDFFF) break;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      break;
    }
    if (cp < 0x80) {
      out[n++] = (char)cp;
    } else if (cp < 0x800) {
      out[n++] = (char)(0xC0 | (cp >> 6));
      out[n++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out[n++] = (char)(0xE0 | (cp >> 12));
      out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      out[n++] = (char)(0x80 | (cp & 0x3F));
    } else {
      out[n++] = (char)(0xF0 | (cp >> 18));
      out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
      out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      out[n++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  free(out);
  return NULL;
}

/* Skips a nested object or array (strings inside may hold brackets). */
static inline bool weir_json_skip_nested(weir_json_object *o) {
  int depth = 0;
  while (o->at < o->end) {
    char c = *o->at;
    if (c == '"') {
      char *s = weir_json_string(o);
      if (!s) return false;
      free(s);
      continue;
    }
    o->at++;
    if (c == '{' || c == '[') depth++;
    if (c == '}' || c == ']') {
      if (--depth == 0) return true;
    }
  }
  return false;
}

static inline bool weir_json_word(weir_json_object *o, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(o->end - o->at) < n || memcmp(o->at, word, n) != 0) return false;
  o->at += n;
  return true;
}

/* Starts reading the object in (json, len); false if it does not start with '{'. */
static inline bool weir_json_object_open(weir_json_object *o, const uint8_t *json, size_t len) {
  o->at = (const char *)json;
  o->end = (const char *)json + len;
  o->first = true;
  weir_json_space(o);
  if (o->at >= o->end || *o->at != '{') return false;
  o->at++;
  return true;
}

/* The next member: 1 and fills `m`, 0 at the end of the object (nothing may
 * follow it), -1 if the text is not valid JSON. */
static inline int weir_json_object_next(weir_json_object *o, weir_json_member *m) {
  memset(m, 0, sizeof *m);
  weir_json_space(o);
  if (o->at < o->end && *o->at == '}') {
    o->at++;
    weir_json_space(o);
    return o->at == o->end ? 0 : -1;
  }
  if (!o->first) {
    if (o->at >= o->end || *o->at != ',') return -1;
    o->at++;
    weir_json_space(o);
  }
  o->first = false;
  m->key = weir_json_string(o);
  if (!m->key) return -1;
  weir_json_space(o);
  if (o->at >= o->end || *o->at != ':') goto invalid;
  o->at++;
  weir_json_space(o);
  if (o->at >= o->end) goto invalid;
  char c = *o->at;
  if (c == '"') {
    m->kind = WEIR_JSON_STRING;
    m->string = weir_json_string(o);
    if (!m->string) goto invalid;
  } else if (c == '{' || c == '[') {
    m->kind = WEIR_JSON_OTHER;
    if (!weir_json_skip_nested(o)) goto invalid;
  } else if (weir_json_word(o, "true") || weir_json_word(o, "false")) {
    m->kind = WEIR_JSON_BOOL;
    m->boolean = c == 't';
  } else if (weir_json_word(o, "null")) {
    m->kind = WEIR_JSON_NULL;
  } else {
    /* A number: strtod on a NUL-terminated copy of the token. */
    char token[64];
    size_t n = 0;
    while (o->at + n < o->end && n < sizeof token - 1 && strchr("+-0123456789.eE", o->at[n]) &&
           o->at[n])
      n++;
    memcpy(token, o->at, n);
    token[n] = '\0';
    char *stop;
    m->number = strtod(token, &stop);
    if (n == 0 || stop != token + n) goto invalid;
    m->kind = WEIR_JSON_NUMBER;
    o->at += n;
  }
  return 1;
invalid:
  weir_json_member_free(m);
  return -1;
}

#endif /* WEIR_BATCH_H */
