// Node preload (`node --import`) for the Portkey gateway in bench/overhead.py.
// Its start-server.js listens on a port with no host, i.e. on every interface, and has no
// option to change that. The bench machine must expose nothing, so every listen(port) made in
// this process is given the loopback host.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function patchedListen(...args) {
  const [first] = args;
  const isPort = typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first));
  if (isPort) {
    // listen(port, [host], [backlog], [callback]): set or insert the host.
    if (typeof args[1] === 'string') {
      args[1] = '127.0.0.1';
    } else {
      args.splice(1, 0, '127.0.0.1');
    }
  } else if (first !== null && typeof first === 'object' && 'port' in first) {
    args[0] = Object.assign({}, first, { host: '127.0.0.1' });
  }
  return listen.apply(this, args);
};
