#!/usr/bin/env node
// otpgate's SMSC simulator, built on the npm `smpp` package (an SMPP
// implementation independent of otpgate's own), for tests and benchmarks.
//
// It listens on 127.0.0.1 (port from --port, default 0 = any free one) and
// prints `LISTENING <port>` as its first stdout line. Then one JSON object
// per line for each event: bind, submit (destination, decoded text,
// data_coding, status, message_id), receipt, unbind, close. Tests read the
// delivered text from the `submit` lines.
//
// Behaviour switches, as flags or as lines on stdin (same names, no dashes):
//   --system-id ID --password PW   credentials binds must present
//   --throttle N                   answer the next N submit_sm ESME_RTHROTTLED
//   --queue-full N                 answer the next N submit_sm ESME_RMSGQFUL
//   --reject-prefix P              ESME_RINVDSTADR for destinations starting P
//   --delay-ms MS                  wait before each submit_sm_resp
//   --receipt-delay-ms MS          receipt after MS (default 50; -1 = none)
//   --receipt-stat STAT            stat of receipts (default DELIVRD)
//   --receipt-mode text|tlv|both   how receipts carry id and state (default text)
//   --id-format hex|dec            message id style (default hex)
//   --quiet                        no submit/receipt lines (benchmarks)
//   --tls-key FILE --tls-cert FILE serve TLS instead of plain TCP
// stdin only: `drop` closes every session abruptly; `quit` exits.
'use strict';

const fs = require('fs');
const readline = require('readline');
const smpp = require('smpp');

const opts = {
  host: '127.0.0.1',
  port: 0,
  systemId: 'otpgate',
  password: 'secret',
  throttle: 0,
  queueFull: 0,
  rejectPrefix: [],
  delayMs: 0,
  receiptDelayMs: 50,
  receiptStat: 'DELIVRD',
  receiptMode: 'text',
  idFormat: 'hex',
  quiet: false,
  tlsKey: null,
  tlsCert: null,
};

function applySwitch(name, value) {
  switch (name) {
    case 'port': opts.port = Number(value); break;
    case 'host': opts.host = value; break;
    case 'system-id': opts.systemId = value; break;
    case 'password': opts.password = value; break;
    case 'throttle': opts.throttle = Number(value); break;
    case 'queue-full': opts.queueFull = Number(value); break;
    case 'reject-prefix': opts.rejectPrefix.push(value); break;
    case 'unreject': opts.rejectPrefix = []; return false;
    case 'delay-ms': opts.delayMs = Number(value); break;
    case 'receipt-delay-ms': opts.receiptDelayMs = Number(value); break;
    case 'receipt-stat': opts.receiptStat = value; break;
    case 'receipt-mode': opts.receiptMode = value; break;
    case 'id-format': opts.idFormat = value; break;
    case 'quiet': opts.quiet = true; return false;
    case 'tls-key': opts.tlsKey = value; break;
    case 'tls-cert': opts.tlsCert = value; break;
    default: throw new Error('unknown switch ' + name);
  }
  return true; // consumed a value
}

const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (!a.startsWith('--')) {
    console.error('unexpected argument ' + a);
    process.exit(2);
  }
  try {
    if (applySwitch(a.slice(2), argv[i + 1])) i++;
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

let counter = 0;
function nextId() {
  counter++;
  const n = 0x10000000 + counter;
  return opts.idFormat === 'dec' ? String(n) : n.toString(16);
}

function smppDate(d) {
  const p = (x) => String(x).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
}

const MESSAGE_STATE = { ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8 };

// Bound sessions with their mode, to send receipts to one that receives.
const bound = new Map(); // session -> {systemId, mode}

function receiverFor(systemId, preferred) {
  if (preferred && bound.has(preferred) && bound.get(preferred).mode !== 'transmitter') {
    return preferred;
  }
  for (const [s, info] of bound) {
    if (info.systemId === systemId && info.mode !== 'transmitter') return s;
  }
  return null;
}

function sendReceipt(origin, systemId, submit, messageId, submittedAt) {
  const session = receiverFor(systemId, origin);
  if (!session) {
    emit({ event: 'receipt_dropped', message_id: messageId, reason: 'no receiver bound' });
    return;
  }
  const stat = opts.receiptStat;
  const delivered = stat === 'DELIVRD' ? '001' : '000';
  const err = stat === 'DELIVRD' ? '000' : '001';
  const fields = {
    source_addr: submit.destination_addr,
    source_addr_ton: submit.dest_addr_ton,
    source_addr_npi: submit.dest_addr_npi,
    destination_addr: submit.source_addr,
    dest_addr_ton: submit.source_addr_ton,
    dest_addr_npi: submit.source_addr_npi,
    esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
    data_coding: 0,
  };
  if (opts.receiptMode === 'text' || opts.receiptMode === 'both') {
    const text = 'id:' + messageId + ' sub:001 dlvrd:' + delivered +
      ' submit date:' + smppDate(submittedAt) + ' done date:' + smppDate(new Date()) +
      ' stat:' + stat + ' err:' + err + ' text:';
    fields.short_message = Buffer.from(text, 'ascii');
  } else {
    fields.short_message = Buffer.alloc(0);
  }
  if (opts.receiptMode === 'tlv' || opts.receiptMode === 'both') {
    fields.receipted_message_id = messageId;
    fields.message_state = MESSAGE_STATE[stat] || 7;
  }
  session.deliver_sm(fields, (resp) => {
    if (!opts.quiet) {
      emit({ event: 'receipt', message_id: messageId, stat, resp_status: resp.command_status });
    }
  });
}

function decodedText(pdu) {
  const m = pdu.short_message;
  if (m && typeof m === 'object' && 'message' in m) {
    return Buffer.isBuffer(m.message) ? m.message.toString('latin1') : m.message;
  }
  return Buffer.isBuffer(m) ? m.toString('latin1') : String(m || '');
}

function onSession(session) {
  let info = null;
  session.on('error', (e) => emit({ event: 'session_error', error: String(e && e.message) }));
  session.on('close', () => {
    bound.delete(session);
    emit({ event: 'close', system_id: info && info.systemId });
  });

  const bind = (mode) => (pdu) => {
    const ok = pdu.system_id === opts.systemId && pdu.password === opts.password;
    emit({
      event: 'bind', mode, system_id: pdu.system_id, system_type: pdu.system_type,
      interface_version: pdu.interface_version, ok,
    });
    if (!ok) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
      return;
    }
    info = { systemId: pdu.system_id, mode };
    bound.set(session, info);
    session.send(pdu.response({ system_id: 'SMSCSIM' }));
  };
  session.on('bind_transceiver', bind('transceiver'));
  session.on('bind_transmitter', bind('transmitter'));
  session.on('bind_receiver', bind('receiver'));

  session.on('enquire_link', (pdu) => {
    session.send(pdu.response());
    if (!opts.quiet) emit({ event: 'enquire_link' });
  });
  session.on('unbind', (pdu) => {
    emit({ event: 'unbind', system_id: info && info.systemId });
    session.send(pdu.response());
    session.close();
  });

  session.on('submit_sm', (pdu) => {
    if (!info || info.mode === 'receiver') {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    let status = smpp.ESME_ROK;
    if (opts.throttle > 0) {
      opts.throttle--;
      status = smpp.ESME_RTHROTTLED;
    } else if (opts.queueFull > 0) {
      opts.queueFull--;
      status = smpp.ESME_RMSGQFUL;
    } else if (opts.rejectPrefix.some((p) => pdu.destination_addr.startsWith(p))) {
      status = smpp.ESME_RINVDSTADR;
    }
    const messageId = status === smpp.ESME_ROK ? nextId() : '';
    if (!opts.quiet) {
      emit({
        event: 'submit',
        t: Date.now(),
        system_id: info.systemId,
        sequence: pdu.sequence_number,
        service_type: pdu.service_type,
        source_addr: pdu.source_addr,
        source_addr_ton: pdu.source_addr_ton,
        source_addr_npi: pdu.source_addr_npi,
        destination_addr: pdu.destination_addr,
        dest_addr_ton: pdu.dest_addr_ton,
        dest_addr_npi: pdu.dest_addr_npi,
        esm_class: pdu.esm_class,
        registered_delivery: pdu.registered_delivery,
        data_coding: pdu.data_coding,
        text: decodedText(pdu),
        status,
        message_id: messageId,
      });
    }
    const respond = () => {
      session.send(pdu.response({ command_status: status, message_id: messageId }));
      if (status === smpp.ESME_ROK && (pdu.registered_delivery & 1) && opts.receiptDelayMs >= 0) {
        const submittedAt = new Date();
        const systemId = info.systemId;
        setTimeout(() => sendReceipt(session, systemId, pdu, messageId, submittedAt),
          opts.receiptDelayMs);
      }
    };
    if (opts.delayMs > 0) setTimeout(respond, opts.delayMs); else respond();
  });
}

const serverOptions = {};
if (opts.tlsKey && opts.tlsCert) {
  serverOptions.key = fs.readFileSync(opts.tlsKey);
  serverOptions.cert = fs.readFileSync(opts.tlsCert);
}
const server = smpp.createServer(serverOptions, onSession);
server.on('error', (e) => {
  console.error('smsc-sim: ' + e.message);
  process.exit(1);
});
server.listen(opts.port, opts.host, () => {
  process.stdout.write('LISTENING ' + server.address().port + '\n');
});

// Control lines on stdin; the simulator also exits when stdin closes, so a
// test that dies never leaves it behind.
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, ...rest] = line.trim().split(/\s+/);
  if (!cmd) return;
  if (cmd === 'quit') process.exit(0);
  if (cmd === 'drop') {
    for (const s of server.sessions.slice()) s.destroy();
    emit({ event: 'dropped' });
    return;
  }
  try {
    applySwitch(cmd, rest.join(' '));
    emit({ event: 'control', cmd, value: rest.join(' ') });
  } catch (e) {
    emit({ event: 'control_error', error: e.message });
  }
});
rl.on('close', () => process.exit(0));
