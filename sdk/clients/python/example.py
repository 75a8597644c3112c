"""A Croupier caller written against the Python code generated from proto/ (see generate.sh).

It connects with mutual TLS and checks, in this order:
 1. registry: GetRegistrations lists the functions; the function to call has an online agent;
 2. invoke: InvokeFunction of --function (agent.ping) echoes the payload it was given;
 3. watch: WatchRegistrations delivers the initial state (ADDED events, then SYNCED);
 4. job: InvokeJob of agent.countdown {"steps": 3, "ms": 50}, then StreamJobEvents: seqs are
    1, 2, 3... without a gap, the first event is START, the last is DONE and the stream ends.

With --echo-only it runs steps 1 and 2 only (used to call a provider that serves one function).
It prints one line per check and exits 1 with "FAILED: ..." when any check fails.

    python3 example.py --server https://127.0.0.1:8443 --tls-dir certs --identity client-c1
"""

import argparse
import json
import sys
import time

import grpc

import croupier_client as cc
from croupier.common.v1 import common_pb2
from croupier.function.v1 import function_pb2, function_pb2_grpc
from croupier.registry.v1 import registry_pb2, registry_pb2_grpc


class Failure(Exception):
    """A failed check."""


def check_registry(args, registry) -> None:
    try:
        resp = registry.GetRegistrations(
            registry_pb2.GetRegistrationsRequest(game_id=args.game_id, env=args.env),
            timeout=args.timeout)
    except grpc.RpcError as e:
        raise Failure(f"registry: GetRegistrations: {cc.rpc_error(e)}")
    print(f"[registry] {len(resp.registrations)} functions in {args.game_id}/{args.env} "
          f"at revision {resp.revision}")
    online = 0
    for r in resp.registrations:
        agents = ", ".join(
            f"{a.agent_id} ({'online' if a.online else 'offline'}, "
            f"{common_pb2.NodeState.Name(a.node_state)})" for a in r.agents)
        print(f"  {r.function_id:<20} {agents}")
        if r.function_id == args.function:
            online += sum(1 for a in r.agents if a.online)
    if online == 0:
        raise Failure(f"registry: {args.function} has no online agent in {args.game_id}/{args.env}")


def check_invoke(args, functions) -> None:
    where = f"invoke {args.function}: "
    payload = cc.to_struct({"from": "python-example", "nonce": str(time.time_ns()), "n": 42,
                            "list": [1, "two", True, None]})
    try:
        resp = functions.InvokeFunction(
            function_pb2.InvokeFunctionRequest(
                game_id=args.game_id, env=args.env, function_id=args.function, payload=payload,
                options=function_pb2.InvokeOptions(timeout=args.timeout)),
            timeout=args.timeout)
    except grpc.RpcError as e:
        raise Failure(where + f"InvokeFunction: {cc.rpc_error(e)}")
    if not resp.success:
        raise Failure(where + f"the handler failed: {resp.error_code}: {resp.error}")
    result = cc.from_struct(resp.result)
    print(f"[invoke] {args.function} served by {resp.agent_id} (request {resp.request_id}): "
          f"{json.dumps(result)}")
    if "payload" not in result:
        raise Failure(where + 'the result has no "payload" field')
    # Compare with the payload as it went over the wire (numbers are floats in a Struct).
    want = cc.from_struct(payload)
    if result["payload"] != want:
        raise Failure(where + f"the result does not echo the payload: got {result['payload']}, "
                      f"want {want}")
    if not resp.agent_id:
        raise Failure(where + "the response names no agent")
    if args.expect_agent and resp.agent_id != args.expect_agent:
        raise Failure(where + f"served by {resp.agent_id}, want {args.expect_agent}")
    print("[invoke] the result echoes the payload")


def check_watch(args, registry) -> None:
    stream = registry.WatchRegistrations(
        registry_pb2.WatchRegistrationsRequest(game_id=args.game_id, env=args.env),
        timeout=args.timeout)
    added = set()
    try:
        for ev in stream:
            if ev.type == registry_pb2.ADDED:
                added.add(ev.registration.function_id)
                print(f"[watch] ADDED {ev.registration.function_id} (revision {ev.revision})")
            elif ev.type == registry_pb2.SYNCED:
                print(f"[watch] SYNCED at revision {ev.revision} after {len(added)} ADDED events")
                if args.function not in added:
                    raise Failure(f"watch: the initial state has no ADDED event for {args.function}")
                return
            else:
                raise Failure(f"watch: unexpected {registry_pb2.EventType.Name(ev.type)} event "
                              "before SYNCED")
    except grpc.RpcError as e:
        raise Failure(f"watch: before SYNCED: {cc.rpc_error(e)}")
    finally:
        stream.cancel()
    raise Failure("watch: the stream ended before SYNCED")


TERMINAL = (function_pb2.DONE, function_pb2.ERROR, function_pb2.CANCELLED)


def check_job(args, functions) -> None:
    where = f"job {args.job_function}: "
    name = function_pb2.EventType.Name
    try:
        started = functions.InvokeJob(
            function_pb2.InvokeJobRequest(
                game_id=args.game_id, env=args.env, function_id=args.job_function,
                payload=cc.to_struct({"steps": 3, "ms": 50})),
            timeout=args.timeout)
    except grpc.RpcError as e:
        raise Failure(where + f"InvokeJob: {cc.rpc_error(e)}")
    if not started.success or not started.job_id:
        raise Failure(where + f"InvokeJob did not start a job: success={started.success} "
                      f"job_id={started.job_id!r} status={started.status!r}")
    if started.status not in ("pending", "running", "completed"):
        raise Failure(where + f"InvokeJob answered status {started.status!r}")
    print(f"[job] started {args.job_function}: job {started.job_id}, status {started.status}")

    stream = functions.StreamJobEvents(
        function_pb2.StreamJobEventsRequest(job_id=started.job_id, from_seq=0),
        timeout=args.timeout)
    events = []
    try:
        for ev in stream:
            data = " " + json.dumps(cc.from_struct(ev.data)) if ev.HasField("data") else ""
            print(f"[job] seq {ev.seq} {name(ev.type):<8} progress {ev.progress:.2f} "
                  f"{json.dumps(ev.message)}{data}")
            if ev.job_id != started.job_id:
                raise Failure(where + f"event seq {ev.seq} belongs to job {ev.job_id!r}")
            if events and events[-1].type in TERMINAL:
                raise Failure(where + f"event seq {ev.seq} ({name(ev.type)}) after the terminal "
                              f"event {name(events[-1].type)}")
            want = len(events) + 1
            if ev.seq != want:
                raise Failure(where + f"event {want} has seq {ev.seq} ({name(ev.type)}), want "
                              f"{want}: seqs must be 1, 2, 3... without a gap")
            events.append(ev)
    except grpc.RpcError as e:
        raise Failure(where + f"StreamJobEvents after {len(events)} events: {cc.rpc_error(e)}")
    finally:
        stream.cancel()
    if not events:
        raise Failure(where + "the event stream ended without events")
    if events[0].type != function_pb2.START:
        raise Failure(where + f"the first event is {name(events[0].type)}, want START")
    if events[-1].type != function_pb2.DONE:
        raise Failure(where + f"the last event is {name(events[-1].type)} "
                      f"({events[-1].message!r}), want DONE")
    print(f"[job] {len(events)} events, seqs 1..{len(events)} consecutive, START first, "
          "DONE last, stream ended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cc.add_connection_flags(parser, identity_default="client-dev")
    parser.add_argument("--function", default="agent.ping",
                        help='function to invoke; it must answer {"payload": <the payload>, ...} '
                             "(default %(default)s)")
    parser.add_argument("--expect-agent", default="",
                        help="if set, the invocation must be served by this agent")
    parser.add_argument("--job-function", default="agent.countdown",
                        help="function to start as a job (default %(default)s)")
    parser.add_argument("--echo-only", action="store_true",
                        help="only check the registry and the invocation (steps 1 and 2)")
    args = parser.parse_args()

    try:
        channel = cc.secure_channel(args.server, args.tls_dir, args.identity, args.timeout)
    except SystemExit as e:
        print(f"python example: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"connected to {args.server} as {args.identity} (tls dir {args.tls_dir})")
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    functions = function_pb2_grpc.FunctionServiceStub(channel)
    try:
        check_registry(args, registry)
        check_invoke(args, functions)
        if not args.echo_only:
            check_watch(args, registry)
            check_job(args, functions)
    except Failure as e:
        print(f"python example: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print("python example: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
