/**
 * The entities and inputs of the public API as TypeScript types, for the package root. Their zod
 * schemas (values) are in `credit-management/models`. Declared as aliases so that the published
 * declarations export types only, as the root's JavaScript does.
 */
import type * as M from "./models/index.js";

export type Account = M.Account;
export type AddCreditsOptions = M.AddCreditsOptions;
export type AlertLevel = M.AlertLevel;
export type AlertState = M.AlertState;
export type BillingPeriod = M.BillingPeriod;
export type CancelOptions = M.CancelOptions;
export type ChangePlanOptions = M.ChangePlanOptions;
export type CheckOptions = M.CheckOptions;
export type ClaimPromoOptions = M.ClaimPromoOptions;
export type CommitOptions = M.CommitOptions;
export type CreatePaymentInput = M.CreatePaymentInput;
export type CreatePlanInput = M.CreatePlanInput;
export type CreatePromoInput = M.CreatePromoInput;
export type CreditsInfo = M.CreditsInfo;
export type CreditsOnChange = M.CreditsOnChange;
export type DeductOptions = M.DeductOptions;
export type EntryType = M.EntryType;
export type FeatureRules = M.FeatureRules;
export type GrantPortion = M.GrantPortion;
export type GrantSource = M.GrantSource;
export type Grant = M.Grant;
export type GrantsQuery = M.GrantsQuery;
export type HistoryQuery = M.HistoryQuery;
export type JournalEntry = M.JournalEntry;
export type LedgerEntriesQuery = M.LedgerEntriesQuery;
export type LedgerEntry = M.LedgerEntry;
export type LedgerEventType = M.LedgerEventType;
export type ListPlansOptions = M.ListPlansOptions;
export type MeterOptions = M.MeterOptions;
export type MutationOptions = M.MutationOptions;
export type NotificationStatus = M.NotificationStatus;
export type NotificationType = M.NotificationType;
export type Notification = M.Notification;
export type PaymentHistoryQuery = M.PaymentHistoryQuery;
export type PaymentStatus = M.PaymentStatus;
export type Payment = M.Payment;
export type Plan = M.Plan;
export type PromoClaim = M.PromoClaim;
export type PromoEligibility = M.PromoEligibility;
export type PromoIneligibility = M.PromoIneligibility;
export type Promo = M.Promo;
export type ReleaseOptions = M.ReleaseOptions;
export type ReservationStatus = M.ReservationStatus;
export type Reservation = M.Reservation;
export type ReserveOptions = M.ReserveOptions;
export type RolloverPolicy = M.RolloverPolicy;
export type SubscribeOptions = M.SubscribeOptions;
export type SubscribeRequest = M.SubscribeRequest;
export type SubscriptionIntent = M.SubscriptionIntent;
export type SubscriptionStatus = M.SubscriptionStatus;
export type Subscription = M.Subscription;
export type ThresholdSpec = M.ThresholdSpec;
export type TrialCredits = M.TrialCredits;
export type UpdatePlanInput = M.UpdatePlanInput;
export type UsageRecord = M.UsageRecord;
export type VoidGrantOptions = M.VoidGrantOptions;
// Domain events (docs/events.md); their zod schemas are in `credit-management/models`.
export type DomainEvent = M.DomainEvent;
export type DomainEventType = M.DomainEventType;
export type EventEnvelope = M.EventEnvelope;
export type CreditsAddedPayload = M.CreditsAddedPayload;
export type CreditsDeductedPayload = M.CreditsDeductedPayload;
export type CreditsRefundedPayload = M.CreditsRefundedPayload;
export type CreditsRemovedPayload = M.CreditsRemovedPayload;
export type HoldPlacedPayload = M.HoldPlacedPayload;
export type HoldSettledPayload = M.HoldSettledPayload;
export type LevelChangedPayload = M.LevelChangedPayload;
export type FeatureStatusChangedPayload = M.FeatureStatusChangedPayload;
