// A Croupier caller written against the C++ code generated from proto/ (see CMakeLists.txt).
//
// It connects with mutual TLS and checks, in this order:
//  1. registry: GetRegistrations lists the functions; the function to call has an online agent;
//  2. invoke: InvokeFunction of --function (agent.ping) echoes the payload it was given;
//  3. watch: WatchRegistrations delivers the initial state (ADDED events, then SYNCED);
//  4. job: InvokeJob of agent.countdown {"steps": 3, "ms": 50}, then StreamJobEvents: seqs are
//     1, 2, 3... without a gap, the first event is START, the last is DONE and the stream ends;
//  5. errors: a misspelt function is refused NOT_FOUND, and the status's google.rpc.ErrorInfo
//     (grpc::Status::error_details(), a serialized google.rpc.Status) says why: reason
//     FUNCTION_NOT_FOUND, with details (the function, the nearest registered names).
//
// With --echo-only it runs steps 1 and 2 only (used to call a provider that serves one function).
// It prints one line per check and exits 1 with "FAILED: ..." when any check fails.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>

#include "croupier/function/v1/function.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "croupier/registry/v1/registry.grpc.pb.h"

namespace common = croupier::common::v1;
namespace fn = croupier::function::v1;
namespace reg = croupier::registry::v1;

namespace {

struct Config {
  std::string server = "https://127.0.0.1:8443";
  std::string tls_dir;
  std::string identity = "client-dev";
  std::string game_id = "default";
  std::string env = "dev";
  std::string function = "agent.ping";
  std::string expect_agent;
  std::string job_function = "agent.countdown";
  bool echo_only = false;
  int timeout = 30;
};

// A failed check; main prints it and exits 1.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char kUsage[] = R"(usage: croupier-cpp-example [flags]

Checks a Croupier server: registry, invocation, watch and a job (see the comment in example.cc).
Flags (--name VALUE or --name=VALUE):
  --server URL          server address, https://HOST:PORT or HOST:PORT (default https://127.0.0.1:8443)
  --tls-dir DIR         directory with ca.pem and IDENTITY.pem/.key (default ~/.croupier/dev/certs)
  --identity STEM       certificate file stem, e.g. client-c1 (default client-dev)
  --game-id ID          game of the calls (default "default")
  --env ENV             environment of the calls (default "dev")
  --function ID         function to invoke; it must answer {"payload": <the payload>, ...} (default agent.ping)
  --expect-agent ID     if set, the invocation must be served by this agent
  --job-function ID     function to start as a job (default agent.countdown)
  --echo-only           only check the registry and the invocation (steps 1 and 2)
  --timeout SECONDS     deadline of each step (default 30)
)";

[[noreturn]] void Usage(const std::string& problem) {
  if (!problem.empty()) std::cerr << "croupier-cpp-example: " << problem << "\n\n";
  std::cerr << kUsage;
  std::exit(2);
}

Config ParseFlags(int argc, char** argv) {
  Config cfg;
  const char* home = std::getenv("HOME");
  cfg.tls_dir = std::string(home ? home : ".") + "/.croupier/dev/certs";
  const std::map<std::string, std::string*> strings = {
      {"server", &cfg.server},         {"tls-dir", &cfg.tls_dir},
      {"identity", &cfg.identity},     {"game-id", &cfg.game_id},
      {"env", &cfg.env},               {"function", &cfg.function},
      {"expect-agent", &cfg.expect_agent}, {"job-function", &cfg.job_function},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) Usage("unexpected argument " + arg);
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "echo-only") {
      cfg.echo_only = !has_value || value == "true" || value == "1";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) Usage("--" + name + " needs a value");
      value = argv[++i];
    }
    if (auto it = strings.find(name); it != strings.end()) {
      *it->second = value;
    } else if (name == "timeout") {
      try {
        cfg.timeout = std::stoi(value);
      } catch (const std::exception&) {
        Usage("--timeout wants whole seconds, got " + value);
      }
      if (cfg.timeout <= 0) Usage("--timeout must be positive");
    } else {
      Usage("unknown flag --" + name);
    }
  }
  return cfg;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "UNKNOWN_CODE";
  }
}

// "rpc: CODE: message", thrown for any failed rpc.
[[noreturn]] void RpcFailed(const std::string& rpc, const grpc::Status& status) {
  throw Failure(rpc + ": " + CodeName(status.error_code()) + ": " + status.error_message());
}

std::string ToJson(const google::protobuf::Message& msg) {
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(msg, &out).ok()) return "<not JSON>";
  return out;
}

google::protobuf::Struct FromJson(const std::string& json) {
  google::protobuf::Struct out;
  if (!google::protobuf::util::JsonStringToMessage(json, &out).ok()) {
    throw Failure("bad JSON payload: " + json);
  }
  return out;
}

class Example {
 public:
  explicit Example(Config cfg) : cfg_(std::move(cfg)) {}

  void Run() {
    Connect();
    CheckRegistry();
    CheckInvoke();
    if (cfg_.echo_only) return;
    CheckWatch();
    CheckJob();
    CheckErrorInfo();
  }

 private:
  // Mutual TLS: the server must present a certificate signed by ca.pem, and we present
  // IDENTITY.pem/.key (an identity spiffe://croupier/client/NAME).
  void Connect() {
    std::string addr = cfg_.server;
    if (addr.rfind("https://", 0) == 0) addr = addr.substr(8);
    while (!addr.empty() && addr.back() == '/') addr.pop_back();
    if (addr.find(':') == std::string::npos) {
      throw Failure("--server " + cfg_.server + ": want https://HOST:PORT");
    }
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = ReadFile(cfg_.tls_dir + "/ca.pem");
    tls.pem_cert_chain = ReadFile(cfg_.tls_dir + "/" + cfg_.identity + ".pem");
    tls.pem_private_key = ReadFile(cfg_.tls_dir + "/" + cfg_.identity + ".key");
    auto channel = grpc::CreateChannel(addr, grpc::SslCredentials(tls));
    if (!channel->WaitForConnected(Deadline())) {
      throw Failure("cannot connect to " + addr +
                    " (server down, or the TLS handshake failed: check --tls-dir and --identity)");
    }
    registry_ = reg::RegistryService::NewStub(channel);
    functions_ = fn::FunctionService::NewStub(channel);
    std::cout << "connected to " << addr << " as " << cfg_.identity << " (tls dir " << cfg_.tls_dir
              << ")" << std::endl;
  }

  std::chrono::system_clock::time_point Deadline() const {
    return std::chrono::system_clock::now() + std::chrono::seconds(cfg_.timeout);
  }

  void CheckRegistry() {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    reg::GetRegistrationsRequest req;
    req.set_game_id(cfg_.game_id);
    req.set_env(cfg_.env);
    reg::GetRegistrationsResponse resp;
    if (auto st = registry_->GetRegistrations(&ctx, req, &resp); !st.ok()) {
      RpcFailed("registry: GetRegistrations", st);
    }
    std::cout << "[registry] " << resp.registrations_size() << " functions in " << cfg_.game_id
              << "/" << cfg_.env << " at revision " << resp.revision() << std::endl;
    int online = 0;
    for (const auto& r : resp.registrations()) {
      std::string agents;
      for (const auto& a : r.agents()) {
        if (!agents.empty()) agents += ", ";
        agents += a.agent_id() + " (" + (a.online() ? "online" : "offline") + ", " +
                  common::NodeState_Name(a.node_state()) + ")";
        if (r.function_id() == cfg_.function && a.online()) ++online;
      }
      std::printf("  %-20s %s\n", r.function_id().c_str(), agents.c_str());
    }
    std::fflush(stdout);
    if (online == 0) {
      throw Failure("registry: " + cfg_.function + " has no online agent in " + cfg_.game_id + "/" +
                    cfg_.env);
    }
  }

  void CheckInvoke() {
    const std::string where = "invoke " + cfg_.function + ": ";
    const auto nonce = std::chrono::system_clock::now().time_since_epoch().count();
    fn::InvokeFunctionRequest req;
    req.set_game_id(cfg_.game_id);
    req.set_env(cfg_.env);
    req.set_function_id(cfg_.function);
    *req.mutable_payload() = FromJson(R"({"from": "cpp-example", "nonce": ")" +
                                      std::to_string(nonce) +
                                      R"(", "n": 42, "list": [1, "two", true, null]})");
    req.mutable_options()->set_timeout(cfg_.timeout);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    fn::InvokeFunctionResponse resp;
    if (auto st = functions_->InvokeFunction(&ctx, req, &resp); !st.ok()) {
      RpcFailed(where + "InvokeFunction", st);
    }
    if (!resp.success()) {
      throw Failure(where + "the handler failed: " + resp.error_code() + ": " + resp.error());
    }
    std::cout << "[invoke] " << cfg_.function << " served by " << resp.agent_id() << " (request "
              << resp.request_id() << "): " << ToJson(resp.result()) << std::endl;
    const auto& fields = resp.result().fields();
    auto it = fields.find("payload");
    if (it == fields.end()) throw Failure(where + "the result has no \"payload\" field");
    // Both sides went through a Struct, so numbers are doubles on both.
    if (!it->second.has_struct_value() ||
        !google::protobuf::util::MessageDifferencer::Equals(it->second.struct_value(),
                                                            req.payload())) {
      throw Failure(where + "the result does not echo the payload: got " + ToJson(it->second) +
                    ", want " + ToJson(req.payload()));
    }
    if (resp.agent_id().empty()) throw Failure(where + "the response names no agent");
    if (!cfg_.expect_agent.empty() && resp.agent_id() != cfg_.expect_agent) {
      throw Failure(where + "served by " + resp.agent_id() + ", want " + cfg_.expect_agent);
    }
    std::cout << "[invoke] the result echoes the payload" << std::endl;
  }

  void CheckWatch() {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    reg::WatchRegistrationsRequest req;
    req.set_game_id(cfg_.game_id);
    req.set_env(cfg_.env);
    auto reader = registry_->WatchRegistrations(&ctx, req);
    std::set<std::string> added;
    reg::RegistrationEvent ev;
    while (reader->Read(&ev)) {
      if (ev.type() == reg::ADDED) {
        added.insert(ev.registration().function_id());
        std::cout << "[watch] ADDED " << ev.registration().function_id() << " (revision "
                  << ev.revision() << ")" << std::endl;
      } else if (ev.type() == reg::SYNCED) {
        std::cout << "[watch] SYNCED at revision " << ev.revision() << " after " << added.size()
                  << " ADDED events" << std::endl;
        ctx.TryCancel();  // we have what we came for; Finish() then reports CANCELLED
        reader->Finish();
        if (!added.count(cfg_.function)) {
          throw Failure("watch: the initial state has no ADDED event for " + cfg_.function);
        }
        return;
      } else {
        ctx.TryCancel();
        reader->Finish();
        throw Failure("watch: unexpected " + reg::EventType_Name(ev.type()) + " event before SYNCED");
      }
    }
    auto st = reader->Finish();
    if (!st.ok()) RpcFailed("watch: before SYNCED", st);
    throw Failure("watch: the stream ended before SYNCED");
  }

  static bool IsTerminal(fn::EventType t) {
    return t == fn::DONE || t == fn::ERROR || t == fn::CANCELLED;
  }

  // Invokes a misspelt function and prints the google.rpc.ErrorInfo of the refusal.
  void CheckErrorInfo() {
    std::string misspelt = cfg_.function;
    std::swap(misspelt[misspelt.size() - 1], misspelt[misspelt.size() - 2]);
    fn::InvokeFunctionRequest req;
    req.set_game_id(cfg_.game_id);
    req.set_env(cfg_.env);
    req.set_function_id(misspelt);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    fn::InvokeFunctionResponse resp;
    const grpc::Status st = functions_->InvokeFunction(&ctx, req, &resp);
    if (st.ok()) throw Failure("errors: " + misspelt + " was served");
    google::rpc::Status details;
    if (!details.ParseFromString(st.error_details())) {
      throw Failure("errors: the status details are not a google.rpc.Status");
    }
    for (const auto& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (!any.Is<google::rpc::ErrorInfo>() || !any.UnpackTo(&info)) continue;
      std::map<std::string, std::string> sorted(info.metadata().begin(), info.metadata().end());
      std::string meta;
      for (const auto& [k, v] : sorted) meta += (meta.empty() ? "" : ", ") + k + "=" + v;
      std::cout << "[error] " << misspelt << ": code=" << CodeName(st.error_code())
                << " reason=" << info.reason() << " details={" << meta
                << "} message=" << st.error_message() << std::endl;
      if (info.reason() != "FUNCTION_NOT_FOUND") {
        throw Failure("errors: want ErrorInfo reason FUNCTION_NOT_FOUND, got " + info.reason());
      }
      return;
    }
    throw Failure("errors: the status (" + std::string(CodeName(st.error_code())) + ": " +
                  st.error_message() + ") carries no ErrorInfo");
  }

  void CheckJob() {
    const std::string where = "job " + cfg_.job_function + ": ";
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    fn::InvokeJobRequest req;
    req.set_game_id(cfg_.game_id);
    req.set_env(cfg_.env);
    req.set_function_id(cfg_.job_function);
    *req.mutable_payload() = FromJson(R"({"steps": 3, "ms": 50})");
    fn::InvokeJobResponse started;
    if (auto st = functions_->InvokeJob(&ctx, req, &started); !st.ok()) {
      RpcFailed(where + "InvokeJob", st);
    }
    if (!started.success() || started.job_id().empty()) {
      throw Failure(where + "InvokeJob did not start a job: " + ToJson(started));
    }
    const std::string& status = started.status();
    if (status != "pending" && status != "running" && status != "completed") {
      throw Failure(where + "InvokeJob answered status \"" + status + "\"");
    }
    std::cout << "[job] started " << cfg_.job_function << ": job " << started.job_id()
              << ", status " << status << std::endl;

    grpc::ClientContext sctx;
    sctx.set_deadline(Deadline());
    fn::StreamJobEventsRequest sreq;
    sreq.set_job_id(started.job_id());
    sreq.set_from_seq(0);
    auto reader = functions_->StreamJobEvents(&sctx, sreq);
    std::vector<fn::JobEvent> events;
    fn::JobEvent ev;
    auto fail = [&](const std::string& why) {
      sctx.TryCancel();
      reader->Finish();
      throw Failure(where + why);
    };
    while (reader->Read(&ev)) {
      std::string data = ev.has_data() ? " " + ToJson(ev.data()) : "";
      std::printf("[job] seq %lld %-8s progress %.2f \"%s\"%s\n", static_cast<long long>(ev.seq()),
                  fn::EventType_Name(ev.type()).c_str(), ev.progress(), ev.message().c_str(),
                  data.c_str());
      std::fflush(stdout);
      if (ev.job_id() != started.job_id()) {
        fail("event seq " + std::to_string(ev.seq()) + " belongs to job \"" + ev.job_id() + "\"");
      }
      if (!events.empty() && IsTerminal(events.back().type())) {
        fail("event seq " + std::to_string(ev.seq()) + " (" + fn::EventType_Name(ev.type()) +
             ") after the terminal event " + fn::EventType_Name(events.back().type()));
      }
      const auto want = static_cast<int64_t>(events.size()) + 1;
      if (ev.seq() != want) {
        fail("event " + std::to_string(want) + " has seq " + std::to_string(ev.seq()) + " (" +
             fn::EventType_Name(ev.type()) + "), want " + std::to_string(want) +
             ": seqs must be 1, 2, 3... without a gap");
      }
      events.push_back(ev);
    }
    if (auto st = reader->Finish(); !st.ok()) {
      RpcFailed(where + "StreamJobEvents after " + std::to_string(events.size()) + " events", st);
    }
    if (events.empty()) throw Failure(where + "the event stream ended without events");
    if (events.front().type() != fn::START) {
      throw Failure(where + "the first event is " + fn::EventType_Name(events.front().type()) +
                    ", want START");
    }
    if (events.back().type() != fn::DONE) {
      throw Failure(where + "the last event is " + fn::EventType_Name(events.back().type()) +
                    " (\"" + events.back().message() + "\"), want DONE");
    }
    std::cout << "[job] " << events.size() << " events, seqs 1.." << events.size()
              << " consecutive, START first, DONE last, stream ended" << std::endl;
  }

  Config cfg_;
  std::unique_ptr<reg::RegistryService::Stub> registry_;
  std::unique_ptr<fn::FunctionService::Stub> functions_;
};

}  // namespace

int main(int argc, char** argv) {
  Config cfg = ParseFlags(argc, argv);
  try {
    Example(std::move(cfg)).Run();
  } catch (const Failure& e) {
    std::cerr << "cpp example: FAILED: " << e.what() << std::endl;
    return 1;
  }
  std::cout << "cpp example: OK" << std::endl;
  return 0;
}
