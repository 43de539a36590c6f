// diffattn/core/status.hpp: what every entry point returns.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "diffattn/core/config.hpp"

DIFFATTN_NAMESPACE_BEGIN

enum class StatusCode : int {
  ok = 0,
  invalid_argument = 1,  ///< the input breaks a rule of docs/SPEC.md (the message names the argument)
  unsupported = 2,       ///< valid, but this backend or build does not provide it
  internal = 3,          ///< a failure inside the backend (e.g. a CUDA error)
};

inline const char* status_code_name(StatusCode c) {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::internal: return "internal";
  }
  return "unknown";
}

/// A status: ok, or a code and a message that names the argument and the rule it breaks.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {StatusCode::invalid_argument, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::unsupported, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::internal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::ok; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(status_code_name(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

/// The exception thrown by throw_if_error() for callers who prefer exceptions.
class Error : public std::runtime_error {
 public:
  explicit Error(const Status& s) : std::runtime_error("diffattn: " + s.to_string()), code_(s.code()) {}
  StatusCode code() const { return code_; }

 private:
  StatusCode code_;
};

inline void throw_if_error(const Status& s) {
  if (!s.ok()) throw Error(s);
}

DIFFATTN_NAMESPACE_END
