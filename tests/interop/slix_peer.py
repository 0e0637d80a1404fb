"""A slixmpp peer for tests/tests/interop.rs, driven by JSON lines on stdin and reporting
JSON lines on stdout (one object per line, flushed), so the Rust test waits on events
instead of sleeping.

usage: python3 slix_peer.py --host H --port P --jid JID --ca CA.pem
           [--cert C.pem --key K.pem] [--mech EXTERNAL|PLAIN] [--password PW]
           [--contrail NAME] [--timeout SECONDS]

Profiles:
  default     RFC 6120: STARTTLS (server name checked against CA.pem), SASL (EXTERNAL with
              the client certificate, or PLAIN), bind. slixmpp's own XEP-0060 plugin
              builds the requests and parses the events.
  --contrail  The Contrail dialect (spec §3): the agent's stream header (from=NAME,
              to=the control JID, empty default namespace), STARTTLS with the client
              certificate, then no SASL and no binding. Three small adaptations, all here:
              the header, dropping the '<?xml version="1.0"?>' declarations the Contrail
              server puts before its negotiation elements (expat refuses a declaration in
              mid-stream), and starting the session on the post-TLS stream header, since
              Contrail sends no features after TLS.

Commands (stdin):   {"op": "subscribe"|"unsubscribe"|"create", "service": S, "node": N}
                    {"op": "publish", "service": S, "node": N, "id": I, "payload": "<x/>"}
                    {"op": "ping", "to": T}          (T may be null: the server)
                    {"op": "raw", "xml": "<iq .../>"} (sent as is; Contrail IQs)
                    {"op": "quit"}
Events (stdout):    {"event": "online", "jid": ..., "tls": "TLSv1.3"}
                    {"event": "result", "op": ..., "ok": true|false, "detail": ...}
                    {"event": "item", "node": ..., "id": ..., "payload": "<entry .../>"}
                    {"event": "retract", "node": ..., "id": ...}
                    {"event": "contrail", "node": ..., "ids": [...], "retracts": [...]}
                    {"event": "error", "detail": ...}
"""
import argparse
import asyncio
import json
import logging
import sys
import threading
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PUBSUB = 'http://jabber.org/protocol/pubsub'
CONTROL_JID = 'network-control@contrailsystems.com'


def emit(**obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument('--host', required=True)
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--jid', required=True)
    p.add_argument('--ca', required=True)
    p.add_argument('--cert')
    p.add_argument('--key')
    p.add_argument('--mech', default='EXTERNAL')
    p.add_argument('--password', default='')
    p.add_argument('--contrail', metavar='NAME')
    p.add_argument('--timeout', type=float, default=60)
    p.add_argument('-v', action='store_true')
    return p.parse_args()


def make_client(a):
    c = slixmpp.ClientXMPP(a.jid, a.password, sasl_mech=None if a.contrail else a.mech)
    c.ca_certs = a.ca
    c.enable_direct_tls = False      # STARTTLS only, as our servers
    c.enable_plaintext = False       # never continue without TLS
    if a.cert:
        c.certfile, c.keyfile = a.cert, a.key
    for plugin in ('xep_0030', 'xep_0060', 'xep_0199'):
        c.register_plugin(plugin)
    if a.contrail:
        adapt_to_contrail(c, a.contrail)
    return c


def adapt_to_contrail(c, name):
    c.stream_header = (
        "<stream:stream from='%s' to='%s' version='1.0' xml:lang='en' xmlns='' "
        "xmlns:stream='http://etherx.jabber.org/streams'>" % (name, CONTROL_JID))
    receive = c.data_received

    def data_received(data):
        # Each declaration arrives in the same write as the element it prefixes (spec §3.3).
        receive(data.replace(b'<?xml version="1.0"?>', b''))
    c.data_received = data_received

    started = c.start_stream_handler

    def start_stream_handler(xml):
        started(xml)
        # The server's second header (inside TLS) is where a Contrail stream is
        # established; slixmpp queues stanzas until session_start, so fire it here.
        if 'starttls' in c.features:
            c.event('session_start')
    c.start_stream_handler = start_stream_handler

    def on_contrail_message(msg):
        items = msg.xml.find('{%s}event/{%s}items' % (PUBSUB, PUBSUB))
        if items is None:
            return
        emit(event='contrail', node=items.get('node', ''),
             ids=[i.get('id', '') for i in items.findall('{%s}item' % PUBSUB)],
             retracts=[r.get('id', '') for r in items.findall('{%s}retract' % PUBSUB)])
    c.register_handler(Callback(
        'contrail routes', MatchXPath('{jabber:client}message/{%s}event' % PUBSUB),
        on_contrail_message))


async def run_command(c, cmd):
    op = cmd.get('op')
    ps = c.plugin['xep_0060']
    try:
        if op == 'subscribe':
            r = await ps.subscribe(cmd['service'], cmd['node'], timeout=10)
            emit(event='result', op=op, ok=True,
                 detail=r['pubsub']['subscription']['subscription'])
        elif op == 'unsubscribe':
            await ps.unsubscribe(cmd['service'], cmd['node'], timeout=10)
            emit(event='result', op=op, ok=True, detail='')
        elif op == 'create':
            await ps.create_node(cmd['service'], cmd['node'], timeout=10)
            emit(event='result', op=op, ok=True, detail='')
        elif op == 'publish':
            payload = ET.fromstring(cmd['payload'])
            r = await ps.publish(cmd['service'], cmd['node'], id=cmd.get('id'),
                                 payload=payload, timeout=10)
            emit(event='result', op=op, ok=True,
                 detail=r['pubsub']['publish']['item']['id'])
        elif op == 'ping':
            await c.plugin['xep_0199'].send_ping(cmd.get('to') or c.boundjid.domain, timeout=10)
            emit(event='result', op=op, ok=True, detail='')
        elif op == 'raw':
            c.send_raw(cmd['xml'])
            emit(event='result', op=op, ok=True, detail='')
        else:
            emit(event='result', op=op, ok=False, detail='unknown op')
    except slixmpp.exceptions.IqError as e:
        emit(event='result', op=op, ok=False, detail=e.iq['error']['condition'])
    except slixmpp.exceptions.IqTimeout:
        emit(event='result', op=op, ok=False, detail='timeout')


async def main():
    a = parse_args()
    if a.v:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    loop = asyncio.get_running_loop()
    commands = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {'op': 'quit'})
    threading.Thread(target=read_stdin, daemon=True).start()

    c = make_client(a)   # inside the running loop: slixmpp binds it at construction
    online = loop.create_future()
    c.add_event_handler('session_start', lambda _: online.done() or online.set_result(True))
    c.add_event_handler('failed_auth', lambda _: emit(event='error', detail='SASL failed'))
    c.add_event_handler('pubsub_publish', lambda m: emit(
        event='item', node=m['pubsub_event']['items']['node'],
        id=m['pubsub_event']['items']['item']['id'],
        payload=ET.tostring(m['pubsub_event']['items']['item']['payload']).decode()
        if m['pubsub_event']['items']['item']['payload'] is not None else ''))
    c.add_event_handler('pubsub_retract', lambda m: emit(
        event='retract', node=m['pubsub_event']['items']['node'],
        id=m['pubsub_event']['items']['retract']['id']))
    c.add_event_handler('disconnected', lambda _: online.done() or online.set_exception(
        ConnectionError('disconnected before the session started')))
    c.connect(a.host, a.port)
    try:
        await asyncio.wait_for(online, a.timeout)
    except Exception as e:
        emit(event='error', detail='not online: %r' % e)
        return 3
    if not a.contrail:
        # Initial presence: servers deliver messages to a bare JID (pubsub notifications to
        # a bare subscription) only to available resources (RFC 6121 §8.5.2.1.1).
        c.send_presence()
    tls = c.socket.version() if hasattr(c.socket, 'version') else None
    emit(event='online', jid=str(c.boundjid), tls=tls)
    while True:
        # An idle bound, so a test that died without sending "quit" cannot leave us behind.
        try:
            cmd = await asyncio.wait_for(commands.get(), a.timeout)
        except asyncio.TimeoutError:
            emit(event='error', detail='no command for %ss' % a.timeout)
            return 2
        if cmd.get('op') == 'quit':
            break
        await run_command(c, cmd)
    c.disconnect()
    try:
        await asyncio.wait_for(c.disconnected, 2)
    except Exception:
        pass
    return 0


if __name__ == '__main__':
    sys.exit(asyncio.run(main()))
