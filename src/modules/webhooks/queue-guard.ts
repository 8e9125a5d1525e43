import type { WebhookErrorCode } from "./errors.js";
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { BlockList, isIP } from "node:net";
import { ConfigurationError, CreditError } from "../../core/errors.js";

/**
 * The SSRF guard of webhook deliveries (docs/notifications.md, "Webhooks"): a target address in a
 * private, loopback, link-local, shared, multicast or reserved range is refused unless a network
 * the host allows (`allowNetworks`) holds it. Checked at connection time, on the addresses the
 * name resolved to for that connection (so a name that resolves elsewhere later — DNS rebinding —
 * is caught), and on an IP literal in the URL (which Node connects to without a lookup).
 */

const BLOCKED_V4 = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.0.2.0/24",
  "192.88.99.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "198.51.100.0/24",
  "203.0.113.0/24",
  "224.0.0.0/4",
  "240.0.0.0/4",
];
const BLOCKED_V6 = [
  "::/96", // unspecified, loopback and the old IPv4-compatible addresses
  "64:ff9b::/96",
  "64:ff9b:1::/48",
  "100::/64",
  "2001::/23",
  "2001:db8::/32",
  "2002::/16",
  "fc00::/7",
  "fe80::/10",
  "fec0::/10",
  "ff00::/8",
];

/** A refused target address: the delivery is not sent (nothing leaves the process). @public */
export class WebhookAddressError extends CreditError<WebhookErrorCode> {
  /** An error for an endpoint address the guard refuses. */
  constructor(message: string) {
    super("WEBHOOK_ADDRESS_REFUSED", 422, message);
  }
}

/** Networks let through the guard, from CIDR strings (`10.1.0.0/16`, `::1/128`, `127.0.0.1`). */
export function allowList(networks: readonly string[]): BlockList {
  const list = new BlockList();
  for (const net of networks) {
    const [address = "", prefix] = net.split("/");
    const family = isIP(address);
    if (family === 0) throw new ConfigurationError(`"${net}" is not an IP address or CIDR network`);
    const bits = prefix === undefined ? (family === 4 ? 32 : 128) : Number(prefix);
    if (!Number.isInteger(bits) || bits < 0 || bits > (family === 4 ? 32 : 128))
      throw new ConfigurationError(`"${net}" has a bad prefix length`);
    list.addSubnet(address, bits, family === 4 ? "ipv4" : "ipv6");
  }
  return list;
}

/** The networks refused, read as `allowList` reads CIDR strings (each one's family from its address). */
const blocked = allowList([...BLOCKED_V4, ...BLOCKED_V6]);

/** An IPv4 address an IPv6 one carries as `::ffff:a.b.c.d` (mapped), or null. */
function mappedV4(address: string): string | null {
  const m = /^::ffff:(?:0:)?(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (m !== null) return m[1] as string;
  const h = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (h === null) return null;
  const hi = parseInt(h[1] as string, 16);
  const lo = parseInt(h[2] as string, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** Why `address` (an IP) may not be a webhook's target, or null when it may. */
export function addressProblem(address: string, allow: BlockList | null): string | null {
  const family = isIP(address);
  if (family === 0) return `${address} is not an IP address`;
  const v4 = family === 6 ? mappedV4(address) : address;
  const [check, type] = v4 !== null ? [v4, "ipv4" as const] : [address, "ipv6" as const];
  if (allow !== null && (allow.check(address, family === 4 ? "ipv4" : "ipv6") || allow.check(check, type))) return null;
  if (blocked.check(check, type))
    return `${address} is a private, loopback, link-local or reserved address (not allowed for webhooks; see allowNetworks)`;
  return null;
}

/** The callback a `Lookup` answers. @public */
export type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;
/** `dns.lookup`'s shape, as `net.connect` calls it (`all` or not). @public */
export type Lookup = (hostname: string, options: LookupOptions, callback: LookupCallback) => void;

/**
 * A `lookup` for `http.request` that resolves every address of the name and refuses the
 * connection when any of them is not allowed (a name with one private address among public ones
 * could be steered to it). (The default's cast: dns.lookup's overloads, one per `options` shape,
 * are one function, which `Lookup` describes whole.)
 */
export function guardedLookup(allow: BlockList | null, resolve: Lookup = dnsLookup as unknown as Lookup): Lookup {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err !== null) return callback(err, "");
      const list = (Array.isArray(addresses) ? addresses : [{ address: addresses, family: 4 }]) as LookupAddress[];
      if (list.length === 0) return callback(new WebhookAddressError(`${hostname} resolved to no address`), "");
      for (const a of list) {
        const problem = addressProblem(a.address, allow);
        if (problem !== null) return callback(new WebhookAddressError(`${hostname} resolved to ${problem}`), "");
      }
      if (options.all === true) return callback(null, list);
      const first = list[0] as LookupAddress;
      callback(null, first.address, first.family);
    });
  };
}
