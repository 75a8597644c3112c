"""A Croupier provider (agent) in Python: serves one echo function over the Connect tunnel.

    python3 provider.py --id py1 --server https://127.0.0.1:8443 --tls-dir certs

The protocol, step by step (see proto/croupier/control/v1/control.proto):
 1. RegisterAgent with the agent certificate (agent-ID.pem/.key; the id must match it), listing
    the function and its descriptor. The answer carries the session id and heartbeat_interval.
 2. Connect (a bidi stream). The first AgentFrame is Hello{agent_id, session_id}; the server
    answers Welcome.
 3. For each ServerFrame.invoke, run the function and send AgentFrame.result, an InvokeResult
    with the same request_id.
 4. Heartbeat (a unary rpc) every heartbeat_interval seconds, with the session id.
 5. On SIGTERM or SIGINT: send Goodbye (the server drops the registration at once), close our side
    of the stream, wait up to 2 s for the server to close its side, exit 0.

The function (--function, default py.echo) answers {"agent_id": ID, "payload": <the payload>,
"calls": N}, the same shape as the built-in agent.ping. The example does not reconnect: when the
tunnel or a heartbeat fails, or the server says Goaway, it exits 1 with the reason.
"""

import argparse
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

import croupier_client as cc
from croupier.common.v1 import common_pb2
from croupier.control.v1 import control_pb2, control_pb2_grpc

NodeStateName = common_pb2.NodeState.Name


def log(msg: str) -> None:
    print(f"py provider: {msg}", flush=True)


class Provider:
    def __init__(self, args, control):
        self.args = args
        self.control = control
        self.session_id = ""
        self.heartbeat_interval = 15
        self.outbox: "queue.Queue[control_pb2.AgentFrame | None]" = queue.Queue()
        self.welcome = threading.Event()
        self.tunnel_closed = threading.Event()
        self.stop = threading.Event()
        self.failure = ""  # why we stop, when it is not a signal
        self.calls = 0
        self.heartbeats = 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="invoke")

    # --- 1. registration ------------------------------------------------------------------
    def register(self) -> None:
        a = self.args
        descriptor = common_pb2.FunctionDescriptor(
            id=a.function,
            name="Python echo",
            category="example",
            description="Answers with the agent id, the payload it got and how many calls it has "
                        "served (Python provider example).",
            params_schema=cc.to_struct({"type": "object"}),
            semantics=common_pb2.Semantics(kind="query", idempotent=True),
            version="1",
        )
        labels = dict(kv.split("=", 1) for kv in a.label)
        resp = self.control.RegisterAgent(
            control_pb2.RegisterAgentRequest(
                agent_id=a.id, game_id=a.game_id, env=a.env, version="py-example-1",
                functions=[a.function], labels=labels, descriptors=[descriptor]),
            timeout=a.timeout)
        if not resp.success:
            raise SystemExit(f"RegisterAgent answered success=false for {a.id}")
        self.session_id = resp.session_id
        self.heartbeat_interval = resp.heartbeat_interval or 15
        log(f"registered {a.id} in {a.game_id}/{a.env} with {a.function}: session "
            f"{self.session_id}, heartbeat every {self.heartbeat_interval}s, node state "
            f"{NodeStateName(resp.node_state)}")

    # --- 2. the tunnel --------------------------------------------------------------------
    def _frames(self):
        """What we send on Connect: everything put in the outbox, until None (half-close)."""
        while True:
            frame = self.outbox.get()
            if frame is None:
                return
            yield frame

    def connect(self) -> None:
        self.outbox.put(control_pb2.AgentFrame(
            hello=control_pb2.Hello(agent_id=self.args.id, session_id=self.session_id)))
        responses = self.control.Connect(self._frames())
        threading.Thread(target=self._read, args=(responses,), name="tunnel", daemon=True).start()
        if not self.welcome.wait(self.args.timeout):
            raise SystemExit(f"no Welcome within {self.args.timeout}s after Hello: {self.failure}")

    def _read(self, responses) -> None:
        try:
            for frame in responses:
                kind = frame.WhichOneof("frame")
                if kind == "welcome":
                    if frame.welcome.session_id != self.session_id:
                        self._fail(f"Welcome for session {frame.welcome.session_id}, "
                                   f"want {self.session_id}")
                        return
                    log(f"tunnel open (Welcome, node state "
                        f"{NodeStateName(frame.welcome.node_state)})")
                    self.welcome.set()
                elif kind == "invoke":
                    self.pool.submit(self._handle, frame.invoke)
                elif kind == "cancel":
                    # Our one function answers at once, so there is nothing left to stop.
                    log(f"cancel {frame.cancel.request_id}: {frame.cancel.reason}")
                elif kind == "state_change":
                    r = frame.state_change.record
                    log(f"node state now {NodeStateName(r.state)} ({r.reason!r} by {r.actor})")
                elif kind == "goaway":
                    self._fail(f"the server is going away (Goaway: {frame.goaway.reason}); "
                               "this example does not reconnect")
                elif kind == "ack":
                    pass  # job events only; this provider runs no jobs
            if not self.stop.is_set():
                self._fail("the server closed the tunnel")
        except grpc.RpcError as e:
            if not self.stop.is_set():
                self._fail(f"the tunnel failed: {cc.rpc_error(e)}")
        finally:
            self.tunnel_closed.set()

    # --- 3. invocations -------------------------------------------------------------------
    def _handle(self, inv: control_pb2.Invoke) -> None:
        if inv.function_id != self.args.function:
            result = control_pb2.InvokeResult(
                request_id=inv.request_id, success=False, error_code="NOT_FOUND",
                error=f"{self.args.id} does not provide {inv.function_id}")
        else:
            with self.lock:
                self.calls += 1
                calls = self.calls
            result = control_pb2.InvokeResult(
                request_id=inv.request_id, success=True,
                result=cc.to_struct({"agent_id": self.args.id,
                                     "payload": cc.from_struct(inv.payload),
                                     "calls": calls}))
        log(f"invoke {inv.function_id} request {inv.request_id} from {inv.caller}: "
            f"{'ok' if result.success else result.error_code}")
        self.outbox.put(control_pb2.AgentFrame(result=result))

    # --- 4. heartbeats --------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(self.heartbeat_interval):
            try:
                resp = self.control.Heartbeat(
                    control_pb2.HeartbeatRequest(
                        agent_id=self.args.id, timestamp=int(time.time() * 1000),
                        session_id=self.session_id, status={"calls": str(self.calls)}),
                    timeout=max(self.heartbeat_interval, 5))
            except grpc.RpcError as e:
                self._fail(f"Heartbeat: {cc.rpc_error(e)}")
                return
            if not resp.success:
                self._fail("Heartbeat answered success=false: the session is gone")
                return
            self.heartbeats += 1
            log(f"heartbeat {self.heartbeats} ok (node state {NodeStateName(resp.node_state)})")

    def _fail(self, why: str) -> None:
        if not self.failure:
            self.failure = why
        self.stop.set()

    # --- 5. run until a signal, then say goodbye ------------------------------------------
    def run(self) -> int:
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        log(f"serving {self.args.function} as {self.args.id}")
        while not self.stop.wait(0.2):
            pass
        if self.failure:
            log(f"FAILED: {self.failure}")
            self.outbox.put(None)
            return 1
        log("stopping: sending Goodbye")
        self.outbox.put(control_pb2.AgentFrame(goodbye=control_pb2.Goodbye(reason="SIGTERM")))
        self.outbox.put(None)  # close our side of the stream
        if not self.tunnel_closed.wait(2):
            log("the server did not close the tunnel within 2s")
        self.pool.shutdown(wait=True)
        log(f"goodbye after {self.calls} calls and {self.heartbeats} heartbeats")
        return 0

    def on_signal(self, signum, _frame) -> None:
        log(f"got {signal.Signals(signum).name}")
        self.stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", required=True, help="agent id; must match the agent certificate")
    cc.add_connection_flags(parser, identity_default="")
    parser.add_argument("--function", default="py.echo",
                        help="id of the echo function to serve (default %(default)s)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="label for selector routing (repeatable)")
    args = parser.parse_args()
    args.identity = args.identity or f"agent-{args.id}"
    if any("=" not in kv for kv in args.label):
        parser.error("--label wants KEY=VALUE")

    channel = cc.secure_channel(args.server, args.tls_dir, args.identity, args.timeout)
    provider = Provider(args, control_pb2_grpc.ControlServiceStub(channel))
    signal.signal(signal.SIGTERM, provider.on_signal)
    signal.signal(signal.SIGINT, provider.on_signal)
    try:
        provider.register()
        provider.connect()
    except grpc.RpcError as e:
        log(f"FAILED: {cc.rpc_error(e)}")
        return 1
    except SystemExit as e:
        log(f"FAILED: {e}")
        return 1
    try:
        return provider.run()
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
