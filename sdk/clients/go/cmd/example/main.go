// Command example is a Croupier caller written against the Go code generated from proto/.
//
// It connects with mutual TLS and checks, in this order:
//  1. registry: GetRegistrations lists the functions; the function to call has an online agent;
//  2. invoke: InvokeFunction of --function (agent.ping) echoes the payload it was given;
//  3. watch: WatchRegistrations delivers the initial state (ADDED events, then SYNCED);
//  4. job: InvokeJob of agent.countdown {"steps": 3, "ms": 50}, then StreamJobEvents: seqs are
//     1, 2, 3... without a gap, the first event is START, the last is DONE and the stream ends;
//  5. errors: a misspelt function is refused NOT_FOUND, and the status's google.rpc.ErrorInfo says
//     why (reason FUNCTION_NOT_FOUND) with details (the function, the nearest registered names).
//
// With --echo-only it runs steps 1 and 2 only (used to call a provider that serves one function).
// It prints one line per check and exits 1 with "FAILED: ..." when any check fails.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	functionv1 "croupier.dev/sdk/go/croupier/function/v1"
	registryv1 "croupier.dev/sdk/go/croupier/registry/v1"
)

type config struct {
	server      string
	tlsDir      string
	identity    string
	gameID      string
	env         string
	function    string
	expectAgent string
	jobFunction string
	echoOnly    bool
	timeout     time.Duration
}

const usage = `usage: example [flags]

Checks a Croupier server: registry, invocation, watch and a job (see the package comment).
Flags (written --name or -name):
`

func main() {
	home, _ := os.UserHomeDir()
	var cfg config
	flag.StringVar(&cfg.server, "server", "https://127.0.0.1:8443", "server address (https://HOST:PORT or HOST:PORT)")
	flag.StringVar(&cfg.tlsDir, "tls-dir", filepath.Join(home, ".croupier", "dev", "certs"), "directory with ca.pem and IDENTITY.pem/.key")
	flag.StringVar(&cfg.identity, "identity", "client-dev", "certificate file stem, e.g. client-c1 for client-c1.pem/.key")
	flag.StringVar(&cfg.gameID, "game-id", "default", "game of the calls")
	flag.StringVar(&cfg.env, "env", "dev", "environment of the calls")
	flag.StringVar(&cfg.function, "function", "agent.ping", "function to invoke; it must answer {\"payload\": <the payload>, \"agent_id\": ...}")
	flag.StringVar(&cfg.expectAgent, "expect-agent", "", "if set, the invocation must be served by this agent")
	flag.StringVar(&cfg.jobFunction, "job-function", "agent.countdown", "function to start as a job")
	flag.BoolVar(&cfg.echoOnly, "echo-only", false, "only check the registry and the invocation (steps 1 and 2)")
	timeoutSecs := flag.Int("timeout", 30, "deadline of each step, in seconds")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 || *timeoutSecs <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	cfg.timeout = time.Duration(*timeoutSecs) * time.Second

	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "go example: FAILED: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("go example: OK")
}

func run(cfg config) error {
	conn, err := dial(cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	registry := registryv1.NewRegistryServiceClient(conn)
	functions := functionv1.NewFunctionServiceClient(conn)

	if err := checkRegistry(cfg, registry); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if err := checkInvoke(cfg, functions); err != nil {
		return fmt.Errorf("invoke %s: %w", cfg.function, err)
	}
	if cfg.echoOnly {
		return nil
	}
	if err := checkWatch(cfg, registry); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	if err := checkJob(cfg, functions); err != nil {
		return fmt.Errorf("job %s: %w", cfg.jobFunction, err)
	}
	if err := checkErrorInfo(cfg, functions); err != nil {
		return fmt.Errorf("errors: %w", err)
	}
	return nil
}

// checkErrorInfo invokes a misspelt function and prints the google.rpc.ErrorInfo that the
// server's status carries (grpc-status-details-bin): the machine code and the details.
func checkErrorInfo(cfg config, functions functionv1.FunctionServiceClient) error {
	n := len(cfg.function)
	misspelt := cfg.function[:n-2] + cfg.function[n-1:] + cfg.function[n-2:n-1]
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	_, err := functions.InvokeFunction(ctx, &functionv1.InvokeFunctionRequest{
		FunctionId: misspelt, GameId: cfg.gameID, Env: cfg.env,
	})
	if err == nil {
		return fmt.Errorf("%s was served", misspelt)
	}
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			fmt.Printf("[error] %s: code=%s reason=%s details=%v message=%s\n",
				misspelt, st.Code(), info.GetReason(), info.GetMetadata(), st.Message())
			if info.GetReason() != "FUNCTION_NOT_FOUND" {
				return fmt.Errorf("want ErrorInfo reason FUNCTION_NOT_FOUND, got %q", info.GetReason())
			}
			return nil
		}
	}
	return fmt.Errorf("the status (%s: %s) carries no ErrorInfo", st.Code(), st.Message())
}

// dial opens a channel with mutual TLS: the server must present a certificate signed by ca.pem,
// and we present IDENTITY.pem/.key (an identity spiffe://croupier/client/NAME).
func dial(cfg config) (*grpc.ClientConn, error) {
	addr := strings.TrimSuffix(strings.TrimPrefix(cfg.server, "https://"), "/")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--server %q: want https://HOST:PORT: %w", cfg.server, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(cfg.tlsDir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in %s", filepath.Join(cfg.tlsDir, "ca.pem"))
	}
	stem := filepath.Join(cfg.tlsDir, cfg.identity)
	cert, err := tls.LoadX509KeyPair(stem+".pem", stem+".key")
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate %s.pem/.key: %w", stem, err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   host,
		MinVersion:   tls.VersionTLS12,
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	fmt.Printf("connected to %s as %s (tls dir %s)\n", addr, cfg.identity, cfg.tlsDir)
	return conn, nil
}

// grpcErr renders a gRPC error as "CODE: message", with the code spelled as in the gRPC spec
// (INVALID_ARGUMENT, like the C++ and Python examples print it).
func grpcErr(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fmt.Errorf("%s: %s", codeName(s.Code()), s.Message())
}

// codeName turns codes.InvalidArgument ("InvalidArgument") into "INVALID_ARGUMENT".
func codeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func checkRegistry(cfg config, registry registryv1.RegistryServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	resp, err := registry.GetRegistrations(ctx, &registryv1.GetRegistrationsRequest{GameId: cfg.gameID, Env: cfg.env})
	if err != nil {
		return fmt.Errorf("GetRegistrations: %w", grpcErr(err))
	}
	fmt.Printf("[registry] %d functions in %s/%s at revision %d\n", len(resp.GetRegistrations()), cfg.gameID, cfg.env, resp.GetRevision())
	online := 0
	for _, r := range resp.GetRegistrations() {
		var agents []string
		for _, a := range r.GetAgents() {
			state := "offline"
			if a.GetOnline() {
				state = "online"
			}
			agents = append(agents, fmt.Sprintf("%s (%s, %s)", a.GetAgentId(), state, a.GetNodeState()))
			if r.GetFunctionId() == cfg.function && a.GetOnline() {
				online++
			}
		}
		fmt.Printf("  %-20s %s\n", r.GetFunctionId(), strings.Join(agents, ", "))
	}
	if online == 0 {
		return fmt.Errorf("%s has no online agent in %s/%s", cfg.function, cfg.gameID, cfg.env)
	}
	return nil
}

func checkInvoke(cfg config, functions functionv1.FunctionServiceClient) error {
	sent := map[string]any{
		"from":  "go-example",
		"nonce": fmt.Sprintf("%d", time.Now().UnixNano()),
		"n":     42,
		"list":  []any{1, "two", true, nil},
	}
	payload, err := structpb.NewStruct(sent)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	resp, err := functions.InvokeFunction(ctx, &functionv1.InvokeFunctionRequest{
		GameId:     cfg.gameID,
		Env:        cfg.env,
		FunctionId: cfg.function,
		Payload:    payload,
		Options:    &functionv1.InvokeOptions{Timeout: int32(cfg.timeout / time.Second)},
	})
	if err != nil {
		return fmt.Errorf("InvokeFunction: %w", grpcErr(err))
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("the handler failed: %s: %s", resp.GetErrorCode(), resp.GetError())
	}
	result, _ := protojson.Marshal(resp.GetResult())
	fmt.Printf("[invoke] %s served by %s (request %s): %s\n", cfg.function, resp.GetAgentId(), resp.GetRequestId(), result)
	got, ok := resp.GetResult().AsMap()["payload"]
	if !ok {
		return fmt.Errorf("the result has no \"payload\" field: %s", result)
	}
	// Compare with the payload as it went over the wire (numbers are float64 in a Struct).
	if want := payload.AsMap(); !reflect.DeepEqual(got, want) {
		return fmt.Errorf("the result does not echo the payload: got %v, want %v", got, want)
	}
	if resp.GetAgentId() == "" {
		return errors.New("the response names no agent")
	}
	if cfg.expectAgent != "" && resp.GetAgentId() != cfg.expectAgent {
		return fmt.Errorf("served by %s, want %s", resp.GetAgentId(), cfg.expectAgent)
	}
	fmt.Println("[invoke] the result echoes the payload")
	return nil
}

func checkWatch(cfg config, registry registryv1.RegistryServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	stream, err := registry.WatchRegistrations(ctx, &registryv1.WatchRegistrationsRequest{GameId: cfg.gameID, Env: cfg.env})
	if err != nil {
		return fmt.Errorf("WatchRegistrations: %w", grpcErr(err))
	}
	added := map[string]bool{}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return errors.New("the stream ended before SYNCED")
		}
		if err != nil {
			return fmt.Errorf("before SYNCED: %w", grpcErr(err))
		}
		switch ev.GetType() {
		case registryv1.EventType_ADDED:
			added[ev.GetRegistration().GetFunctionId()] = true
			fmt.Printf("[watch] ADDED %s (revision %d)\n", ev.GetRegistration().GetFunctionId(), ev.GetRevision())
		case registryv1.EventType_SYNCED:
			fmt.Printf("[watch] SYNCED at revision %d after %d ADDED events\n", ev.GetRevision(), len(added))
			if !added[cfg.function] {
				return fmt.Errorf("the initial state has no ADDED event for %s", cfg.function)
			}
			return nil // cancel() ends the stream
		default:
			return fmt.Errorf("unexpected %s event before SYNCED", ev.GetType())
		}
	}
}

func checkJob(cfg config, functions functionv1.FunctionServiceClient) error {
	payload, err := structpb.NewStruct(map[string]any{"steps": 3, "ms": 50})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	started, err := functions.InvokeJob(ctx, &functionv1.InvokeJobRequest{
		GameId:     cfg.gameID,
		Env:        cfg.env,
		FunctionId: cfg.jobFunction,
		Payload:    payload,
	})
	if err != nil {
		return fmt.Errorf("InvokeJob: %w", grpcErr(err))
	}
	if !started.GetSuccess() || started.GetJobId() == "" {
		return fmt.Errorf("InvokeJob did not start a job: success=%v job_id=%q status=%q", started.GetSuccess(), started.GetJobId(), started.GetStatus())
	}
	switch started.GetStatus() {
	case "pending", "running", "completed":
	default:
		return fmt.Errorf("InvokeJob answered status %q", started.GetStatus())
	}
	fmt.Printf("[job] started %s: job %s, status %s\n", cfg.jobFunction, started.GetJobId(), started.GetStatus())

	stream, err := functions.StreamJobEvents(ctx, &functionv1.StreamJobEventsRequest{JobId: started.GetJobId(), FromSeq: 0})
	if err != nil {
		return fmt.Errorf("StreamJobEvents: %w", grpcErr(err))
	}
	var events []*functionv1.JobEvent
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("StreamJobEvents after %d events: %w", len(events), grpcErr(err))
		}
		data := ""
		if ev.GetData() != nil {
			b, _ := protojson.Marshal(ev.GetData())
			data = " " + string(b)
		}
		fmt.Printf("[job] seq %d %-8s progress %.2f %q%s\n", ev.GetSeq(), ev.GetType(), ev.GetProgress(), ev.GetMessage(), data)
		if ev.GetJobId() != started.GetJobId() {
			return fmt.Errorf("event seq %d belongs to job %q", ev.GetSeq(), ev.GetJobId())
		}
		if n := len(events); n > 0 && isTerminal(events[n-1].GetType()) {
			return fmt.Errorf("event seq %d (%s) after the terminal event %s", ev.GetSeq(), ev.GetType(), events[n-1].GetType())
		}
		if want := int64(len(events) + 1); ev.GetSeq() != want {
			return fmt.Errorf("event %d has seq %d (%s), want %d: seqs must be 1, 2, 3... without a gap", len(events)+1, ev.GetSeq(), ev.GetType(), want)
		}
		events = append(events, ev)
	}
	if len(events) == 0 {
		return errors.New("the event stream ended without events")
	}
	if first := events[0].GetType(); first != functionv1.EventType_START {
		return fmt.Errorf("the first event is %s, want START", first)
	}
	last := events[len(events)-1]
	if last.GetType() != functionv1.EventType_DONE {
		return fmt.Errorf("the last event is %s (%q), want DONE", last.GetType(), last.GetMessage())
	}
	fmt.Printf("[job] %d events, seqs 1..%d consecutive, START first, DONE last, stream ended\n", len(events), len(events))
	return nil
}

func isTerminal(t functionv1.EventType) bool {
	return t == functionv1.EventType_DONE || t == functionv1.EventType_ERROR || t == functionv1.EventType_CANCELLED
}
