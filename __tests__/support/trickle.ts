/**
 * A raw test server's answer that trickles: under the low-speed limit (low-speed.ts), never silent for long.
 */
import type { Socket } from 'node:net';

/**
 * Writes `head`, then `body` 20 bytes every 50 ms (400 B/s), and cuts the connection after 3 s, so that a client
 * without a low-speed limit ends too (then as a cut). Returns true, for servers whose hook says "answered".
 */
export function trickle(socket: Socket, head: string, body: Buffer): true {
  socket.write(head);
  let sent = 0;
  const drip = setInterval(() => socket.write(body.subarray(sent, (sent += 20))), 50);
  const cut = setTimeout(() => socket.destroy(), 3000);
  socket.on('close', () => {
    clearInterval(drip);
    clearTimeout(cut);
  });
  return true;
}
