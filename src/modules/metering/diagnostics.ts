import diagnostics_channel from "node:diagnostics_channel";

/** Metering's channel (`DIAGNOSTICS_CHANNELS.metering`, docs/observability.md). */
export const METERING_CHANNEL = "credit-management:metering";

/** A metered call, once settled. @public */
export interface MeteringMessage {
  /** The account metered. */
  userId: string;
  /** The call's hold. */
  reservationId: string;
  /** The credits held for the call. */
  estimate: number;
  /** Whether the hold was committed (charged) or released. */
  outcome: "committed" | "released";
  /** Credits charged. */
  charged: number;
  /** Credits of the hold returned to the account. */
  released: number;
  /**
   * Why: a release's reason (`error`, `no-usage`, `aborted`, …); `after-service` when the hold was
   * gone and the usage was deducted; `replayed` when another attempt had charged; else null.
   */
  reason: string | null;
  /** Usage the overdraft limit left uncharged. */
  shortfall: number;
}

/** Publishes a `MeteringMessage` per metered call settled. */
export const meteringChannel = diagnostics_channel.channel(METERING_CHANNEL);
